"""Training pieces added for occupancy: time-of-day inputs derived from timestamps, transition-weighted BCE, and
seed ensembles merged into one servable model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.errors import ConfigError
from tests.helpers import small_occupancy_config
from training.data import FeatureSpec, derived_numeric, load_csv
from training.fit import task_loss, transition_weights

DATA = Path(__file__).resolve().parents[1] / "data" / "occupancy"


def test_time_of_day_inputs_from_the_timestamp_only() -> None:
    ms = np.array([0, 6 * 3600_000, 12 * 3600_000, 18 * 3600_000], dtype=np.int64)  # 1970-01-01 was a Thursday
    np.testing.assert_allclose(derived_numeric("@tod_sin", ms), [0, 1, 0, -1], atol=1e-12)
    np.testing.assert_allclose(derived_numeric("@tod_cos", ms), [1, 0, -1, 0], atol=1e-12)
    sat = np.array([2 * 86400_000 + 60_000], dtype=np.int64)
    assert derived_numeric("@weekend", sat)[0] == 1.0 and derived_numeric("@weekend", ms)[0] == 0.0
    with pytest.raises(ConfigError):
        derived_numeric("@nope", ms)


def test_derived_inputs_load_beside_the_file_columns(tmp_path: Path) -> None:
    lines = (DATA / "datatest.txt").read_text().splitlines()[:4]
    f = tmp_path / "t.txt"
    f.write_text("\n".join(lines) + "\n")
    s = load_csv(f, FeatureSpec(("Light", "@tod_sin", "@tod_cos"), (), "Occupancy"), "date")[0]
    assert s.values.shape == (3, 3)
    ang = 2 * np.pi * (14 * 60 + 19) / 1440  # first row: 2015-02-02 14:19:00
    np.testing.assert_allclose(s.values[0, 1:], [np.sin(ang), np.cos(ang)], atol=1e-9)


def test_transition_weights_and_weighted_bce() -> None:
    w = transition_weights(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 4.0, 1)
    assert w.tolist() == [1, 1, 1, 5, 5, 5, 1, 1, 1, 1]
    logits = torch.tensor([[0.3, -0.2, 1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    plain = task_loss("event", {"event": logits[..., None]}, y, mask)
    same = task_loss("event", {"event": logits[..., None]}, y, mask, weight=torch.ones(1, 3))
    assert float(plain) == pytest.approx(float(same))
    heavy = task_loss("event", {"event": logits[..., None]}, y, mask, weight=torch.tensor([[3.0, 1.0, 100.0]]))
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :2], y[0, :2], reduction="none")
    assert float(heavy) == pytest.approx(float((3 * per[0] + per[1]) / 2))  # the masked step never counts


# --------------------------------------------------------------------------------------------- seed ensembles


@pytest.mark.parametrize(("family", "layers", "learned_s0"), [("gru", 1, False), ("lstm", 2, True), ("rnn", 1, False)])
def test_merged_ensemble_is_the_mean_of_its_members_step_for_step(family: str, layers: int,
                                                                 learned_s0: bool) -> None:
    from streamer.models import ModelConfig, build_model
    from training.ensemble import merge

    torch.manual_seed(0)
    cfg = ModelConfig(family=family, n_features=3, hidden=5, layers=layers, heads=("event",),
                      learn_initial_state=learned_s0)
    members = [build_model(cfg) for _ in range(3)]
    for m in members:
        for p in m.parameters():
            p.data.normal_(0.0, 0.5)  # biases and s0 too: zero-initialised ones would hide a misplaced block
    merged = merge(members)
    assert merged.config.hidden == 15 and merged.config.layers == layers
    x = torch.randn(2, 40, 3)
    want = torch.stack([m(x, None, None, None)[0]["event"] for m in members]).mean(0)
    got, state = merged(x[:, :25], None, None, None)
    rest, _ = merged(x[:, 25:], None, state, None)  # carried state: the members' states side by side
    torch.testing.assert_close(torch.cat([got["event"], rest["event"]], dim=1), want, atol=1e-5, rtol=0)


def test_merge_refuses_mixed_architectures_and_embeddings() -> None:
    from streamer.models import ModelConfig, build_model
    from training.ensemble import merge

    a = build_model(ModelConfig(family="gru", n_features=3, hidden=4, heads=("event",)))
    b = build_model(ModelConfig(family="gru", n_features=3, hidden=5, heads=("event",)))
    with pytest.raises(ConfigError):
        merge([a, b])
    with pytest.raises(ConfigError):
        merge([])
    c = build_model(ModelConfig(family="gru", n_features=3, hidden=4, heads=("event",), categorical=((7, 2),)))
    with pytest.raises(ConfigError):
        merge([c, c])


def test_pipeline_trains_an_ensemble_and_serves_it_as_one_model(tmp_path: Path) -> None:
    from streamer.checkpoints import read_meta
    from streamer.model_source import load_checkpoint
    from training.pipeline import run

    cfg = small_occupancy_config(tmp_path, {"epochs": 1, "batch": 4, "tbptt": 16, "ensemble": 3, "seed": 7,
                                            "pos_weight": 1.0})
    m = run(cfg, tmp_path / "out", progress=False)
    assert m["ensemble"]["members"] == 3 and m["ensemble"]["seeds"] == [7, 8, 9]
    served = load_checkpoint(tmp_path / "out" / "checkpoint")
    assert served.model.config.hidden == 12
    meta = read_meta(tmp_path / "out" / "checkpoint")
    assert len(meta["training"]["member_histories"]) == 3 and 0.0 < meta["thresholds"]["event"] < 1.0
    with pytest.raises(ConfigError):
        run({**cfg, "train": {**cfg["train"], "ensemble": 0}}, tmp_path / "bad", progress=False)


def test_refit_replays_the_chosen_epochs_on_train_and_validation(tmp_path: Path) -> None:
    from streamer.checkpoints import read_meta
    from training.fit import TrainConfig
    from training.pipeline import run

    cfg = small_occupancy_config(tmp_path, {"epochs": 3, "patience": 3, "batch": 4, "tbptt": 16, "seed": 7,
                                            "pos_weight": 1.0, "refit": True})
    m = run(cfg, tmp_path / "out", progress=False)
    meta = read_meta(tmp_path / "out" / "checkpoint")
    first, (refit,) = meta["training"]["history"], meta["training"]["refit_histories"]
    n = first["best_epoch"] + 1
    # exactly the chosen epochs at the first fit's learning rates, over train + validation rows as one stream
    assert m["refit"]["epochs"] == [n] and refit["lr"] == first["lr"][:n] and refit["best_epoch"] == n - 1
    assert m["refit"]["rows"] == [meta["training"]["splits"]["train"][0], meta["training"]["splits"]["val"][1]]
    assert meta["thresholds"]["event"] == m["refit"]["threshold"] == m["threshold"]
    assert 0.3 <= m["threshold"] <= 0.7  # the first fit's calibrated threshold
    fixed = run({**cfg, "train": {**cfg["train"], "refit_threshold": 0.5}}, tmp_path / "fixed", progress=False)
    assert fixed["threshold"] == 0.5
    with pytest.raises(ConfigError):
        TrainConfig(task="event", refit=True, refit_threshold="calibrate")
    with pytest.raises(ConfigError):  # a refit is for event models
        run({**cfg, "data": {**cfg["data"], "label": None}}, tmp_path / "bad", progress=False)



def test_events_section_sets_the_served_run_length(tmp_path: Path) -> None:
    from streamer.checkpoints import read_meta
    from training.pipeline import run

    cfg = small_occupancy_config(tmp_path, {"epochs": 1, "batch": 4, "tbptt": 16, "seed": 7})
    m = run({**cfg, "events": {"min_run": 2}}, tmp_path / "out", progress=False)
    meta = read_meta(tmp_path / "out" / "checkpoint")
    assert meta["thresholds"]["event_min_run"] == m["event_min_run"] == 2
    assert "event_min_run" not in read_meta(_plain(cfg, tmp_path))["thresholds"]
    for bad in ({"min_run": 0}, {"min_run": 1.5}, {"min_runs": 2}):
        with pytest.raises(ConfigError, match=r"\[events\]"):
            run({**cfg, "events": bad}, tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match=r"\[events\] is for event models"):
        run({**cfg, "data": {**cfg["data"], "label": None}, "events": {"min_run": 2}}, tmp_path / "bad",
            progress=False)


def _plain(cfg: dict, tmp_path: Path) -> Path:
    from training.pipeline import run

    run(cfg, tmp_path / "plain", progress=False)
    return tmp_path / "plain" / "checkpoint"
