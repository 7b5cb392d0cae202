"""`streamer eval ett`: the standard protocol's windows and repeat-last baseline with a tiny checkpoint, and the
training config derived from examples/ett.toml."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from lab.evaluation import ett
from streamer.models import ModelConfig, build_model
from tests.helpers import parse_cli

ETTH1 = Path(__file__).resolve().parents[1] / "data" / "ett" / "ETTh1.csv"


def test_derived_config_changes_only_path_and_horizon(tmp_path: Path) -> None:
    cfg = tomllib.loads(ett.derived_config(tmp_path / "x.csv", 192))
    base = tomllib.loads(ett.EXAMPLE.read_text())
    assert cfg["data"]["path"] == str((tmp_path / "x.csv").resolve()) and cfg["model"]["horizon"] == 192
    assert cfg["split"] == base["split"] and cfg["train"] == base["train"]


def test_eval_ett_with_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    one_torch_thread: None) -> None:
    from streamer import checkpoints
    from training.data import FeatureSpec, Normalizer, load_csv, split_rows

    series = load_csv(ETTH1, FeatureSpec(ett.CHANNELS), "date")[0]
    norm = Normalizer.fit([split_rows(series, {"train": ett.TRAIN})["train"]])
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=7, hidden=4, heads=("forecast",), horizon=96))
    checkpoints.save(tmp_path / "ckpt", model, {"features": FeatureSpec(ett.CHANNELS).to_dict(),
                                                 "normalization": norm.to_dict(), "horizon": 96})
    out = tmp_path / "out"
    data = tmp_path / "transformer_2.csv"  # ETTh1 under another name: the report names the file it scored
    shutil.copyfile(ETTH1, data)
    args = parse_cli(["eval", "ett", "--data", str(data), "--horizon", "96", "--checkpoint", str(tmp_path / "ckpt"),
                  "--out", str(out), "--json", "--quiet", "--threads", "1"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("transformer_2 test, horizon 96: MSE ") and "ETTh1" not in "".join(lines)
    m = json.loads(lines[-1])
    assert m["data"] == str(data)
    assert {"mse", "mae", "repeat_mse", "repeat_mae"} <= set(m)
    assert m["repeat_mse"] == pytest.approx(1.295, abs=0.01) and m["repeat_mae"] == pytest.approx(0.713, abs=0.01)
    assert m["test_windows"] == 14400 - 11520 - 96 + 1 and m["normalization_matches_checkpoint"]
    assert m["mse"] > 0 and (out / "best.png").exists() and (out / "worst.png").exists()


def test_the_engine_serves_the_forecasts_training_scored(one_torch_thread: None) -> None:
    import numpy as np

    from training.delay import DelayLine, export
    from training.evaluate import predict_stream
    from training.layout import Stream

    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=7, hidden=6 * 7 + 3, heads=("forecast",), horizon=4))
    head = DelayLine(model, 6).parametrize_head()
    with torch.no_grad():
        head.A.normal_(0.0, 0.1)
    export(model).eval()
    x = np.random.default_rng(0).standard_normal((300, 7)).astype(np.float32)
    served = ett.served_forecasts(model, x, 300, chunk=37)
    trained = predict_stream(model, Stream("s", x), heads=("forecast",))["forecast"]
    assert served.shape == (300, 4, 7)
    np.testing.assert_allclose(served, trained, rtol=1e-4, atol=1e-5)
