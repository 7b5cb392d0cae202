"""An event model's linear path: `[model] context` on a labelled config holds the newest readings in delay units
of the state and reads them through the event head, started at the memoryless LDA of the training rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.errors import ConfigError
from streamer.models import ModelConfig, build_model
from tests.helpers import small_occupancy_config
from training.baselines import LinearDiscriminant
from training.delay import DelayLine, export
from training.evaluate import predict_stream
from training.layout import Stream


def _readings(n: int = 300, f: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    labels = (x @ np.array([1.0, -0.5, 0.25][:f]) + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return x, labels


def test_the_linear_path_starts_as_the_lda_and_exports_to_plain_weights() -> None:
    x, labels = _readings()
    lda = LinearDiscriminant.fit(x, labels)
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=3, hidden=DelayLine.hidden_for(2, 3, 4),
                                    heads=("event",)))
    delay = DelayLine(model, 2)
    head = delay.parametrize_event_head(torch.from_numpy(lda.weights), lda.bias)
    with torch.no_grad():  # silence the learned units: the output is the linear path alone
        model.heads["event"].parametrizations.weight.original[:, delay.d :] = 0.0
    stream = Stream("s", x, None, labels, 0, len(x))
    logits = predict_stream(model, stream, heads=("event",))["event"][:, 0]
    np.testing.assert_allclose(logits, lda.logit(x), rtol=1e-3, atol=1e-3)
    assert head.W.shape == (1, 6) and float(head.W.detach()[0, 3:].abs().sum()) == 0.0  # older lags start at 0
    export(model)  # baked into the plain head weight: the same outputs without the parametrisation
    np.testing.assert_allclose(predict_stream(model, stream, heads=("event",))["event"][:, 0], logits, rtol=1e-6)


def test_gradient_steps_move_the_linear_path_at_the_readings_scale() -> None:
    x, labels = _readings()
    model = build_model(ModelConfig(family="gru", n_features=3, hidden=DelayLine.hidden_for(1, 3, 2),
                                    heads=("event",)))
    head = DelayLine(model, 1).parametrize_event_head(torch.zeros(3), 0.0)
    out, _ = model(torch.from_numpy(x)[None])  # one stream, all readings
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["event"][0, :, 0], torch.from_numpy(labels))
    loss.backward()
    # the gradient on W is that of a logistic regression on the readings (not 1e-3 of it)
    assert float(head.W.grad.abs().max()) > 0.05


def test_pipeline_serves_an_event_model_with_a_linear_path(tmp_path: Path) -> None:
    from streamer.checkpoints import read_meta
    from streamer.model_source import load_checkpoint
    from training.pipeline import run

    cfg = small_occupancy_config(tmp_path, {"epochs": 2, "patience": 2, "batch": 4, "tbptt": 16, "seed": 7,
                                   "pos_weight": 1.0, "refit": True})
    cfg["model"]["context"] = 1
    m = run(cfg, tmp_path / "out", progress=False)
    served = load_checkpoint(tmp_path / "out" / "checkpoint")
    assert served.model.config.hidden == 4 + 2  # the learned units and one reading of Light and CO2
    assert not any("parametrizations" in k for k in served.model.state_dict())
    meta = read_meta(tmp_path / "out" / "checkpoint")
    assert meta["context"]["length"] == 1 and "LDA" in meta["context"]["note"]
    assert m["refit"]["epochs"] == [meta["training"]["history"]["best_epoch"] + 1]
    # the delay units hold the newest normalised reading in the served model too
    stream = Stream("s", np.array([[0.5, -1.0]], dtype=np.float32), None, None, 0, 1)
    state = predict_stream(served.model, stream, heads=("event",))
    assert "event" in state
    with pytest.raises(ConfigError, match="ridge"):
        run({**cfg, "train": {**cfg["train"], "ridge": [1.0]}}, tmp_path / "bad", progress=False)


def test_a_linear_path_needs_both_classes_in_the_training_rows(tmp_path: Path) -> None:
    from training.pipeline import run

    cfg = small_occupancy_config(tmp_path, {"epochs": 1, "batch": 4, "tbptt": 16})
    cfg["model"]["context"] = 1
    rows = (Path(cfg["data"]["path"]).read_text().splitlines())
    header, body = rows[0], [r.rsplit(",", 1)[0] + ",0" for r in rows[1:]]
    Path(cfg["data"]["path"]).write_text("\n".join([header, *body]) + "\n")
    with pytest.raises(ConfigError, match="both classes"):
        run(cfg, tmp_path / "out", progress=False)


def test_an_ensemble_of_linear_path_models_serves_as_one_wider_model(tmp_path: Path) -> None:
    from streamer.model_source import load_checkpoint
    from training.pipeline import run

    cfg = small_occupancy_config(tmp_path, {"epochs": 1, "batch": 4, "tbptt": 16, "seed": 7, "ensemble": 2})
    cfg["model"]["context"] = 1
    m = run(cfg, tmp_path / "out", progress=False)
    assert m["ensemble"]["members"] == 2
    assert load_checkpoint(tmp_path / "out" / "checkpoint").model.config.hidden == 2 * (4 + 2)
    forecaster = {**cfg, "data": {**cfg["data"], "label": None}, "model": {**cfg["model"], "horizon": 2}}
    with pytest.raises(ConfigError, match="forecaster"):
        run(forecaster, tmp_path / "bad", progress=False)
