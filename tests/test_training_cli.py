"""`streamer train` end to end on small slices of the shipped data: checkpoint, report, fresh-process reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from streamer import checkpoints
from streamer.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"

ETT_TOML = f"""
[data]
path = "{DATA / 'ett' / 'ETTh1.csv'}"
time_column = "date"
numeric = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
[split.rows]
train = [0, 600]
val = [600, 800]
test = [800, 1000]
[model]
family = "gru"
hidden = 4
context = 8
horizon = 4
[train]
epochs = 2
batch = 8
tbptt = 16
washout = 8
[report]
period = 24
"""

OCC_TOML = f"""
[data]
path = "{DATA / 'occupancy' / 'datatraining.txt'}"
test_path = "{DATA / 'occupancy' / 'datatest.txt'}"
time_column = "date"
numeric = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
categorical = ["@hour"]
label = "Occupancy"
[split]
val_fraction = 0.15
[model]
family = "lstm"
hidden = 8
[train]
epochs = 1
batch = 8
tbptt = 32
recurrent_dropout = 0.2
"""


def test_train_forecast_end_to_end_and_bitwise_reload(tmp_path: Path) -> None:
    cfg = tmp_path / "ett.toml"
    cfg.write_text(ETT_TOML)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    for key in ("test_mse", "test_mae", "repeat_mse", "repeat_mae", "seasonal_mse", "beats_repeat_mse_by"):
        assert key in metrics
    for png in ("loss_curves.png", "forecast.png", "error_distribution.png"):
        assert (tmp_path / "run" / "report" / png).stat().st_size > 1000
    ckpt = tmp_path / "run" / "checkpoint"
    model, meta = checkpoints.load(ckpt, expect_features=meta_features())
    assert meta["context"]["length"] == 8 and meta["horizon"] == 4
    assert set(meta["thresholds"]) >= {"q0.99", "q0.999"}
    assert len(meta["data_fingerprint"]["train_rows_sha256"]) == 64
    x = np.random.default_rng(0).standard_normal((2, 40, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        here = model(torch.from_numpy(x))[0]["forecast"].numpy()
    code = ("import sys, numpy as np, torch\nfrom streamer import checkpoints\nm, _ = checkpoints.load(sys.argv[1])\n"
            "with torch.no_grad():\n"
            "    np.save(sys.argv[3], m(torch.from_numpy(np.load(sys.argv[2])))[0]['forecast'].numpy())\n")
    subprocess.run([sys.executable, "-c", code, str(ckpt), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True)
    assert np.load(tmp_path / "y.npy").tobytes() == here.tobytes()


def meta_features() -> list[str]:
    return ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def test_train_event_end_to_end(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "occ.toml"
    cfg.write_text(OCC_TOML)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--epochs", "1"]) == 0
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    for key in ("test_accuracy", "onset_recall", "offset_recall", "majority_accuracy", "threshold"):
        assert key in metrics
    assert metrics["test_onsets"] == 13
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "run" / "checkpoint")]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["features"]["categorical"] == [{"name": "@hour", "cardinality": 24}]
    assert meta["training"]["config"]["recurrent_dropout"] == 0.2


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(ETT_TOML.replace("[train]", "[train]\nbogus = 1"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_a_trained_forecaster_with_a_delay_line_is_served_as_trained(tmp_path: Path) -> None:
    """The daemon's forecasts of a `streamer train` checkpoint (delay line of 8 readings, horizon 4), fed in polls
    of varying sizes with named channels, are the checkpoint's own forecasts over one pass, in the input's units."""
    from streamer.config import load_settings
    from streamer.model_source import load_checkpoint
    from streamer.service import Service
    from tests.helpers import as_records
    from training.data import FeatureSpec, load_csv
    from training.evaluate import predict_stream
    from training.layout import Stream

    cfg = tmp_path / "ett.toml"
    cfg.write_text(ETT_TOML)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    ckpt = tmp_path / "run" / "checkpoint"
    channels = meta_features()
    s = load_csv(DATA / "ett" / "ETTh1.csv", FeatureSpec(tuple(channels)), "date")[0]
    n = 120
    bodies = [{"stream": "t1", "ts": t, "values": dict(zip(channels, row, strict=True))}
              for t, row in zip(s.ts[:n].tolist(), s.values[:n].tolist(), strict=True)]
    records = as_records(bodies)
    settings = load_settings(model={"checkpoint": str(ckpt)}, engine={"device": "cpu"},
                             output={"forecast_records": "input", "anomalies": False}, metrics={"enabled": False})
    service = Service(settings)
    for a, b in ((0, 1), (1, 9), (9, 50), (50, 51), (51, n)):
        service.process(records[a:b])
    got = np.array([json.loads(r.value)["forecast"] for r in service.pending_records()])
    served = load_checkpoint(ckpt)
    x = ((s.values[:n] - served.mean) / served.std).astype(np.float32)
    offline = predict_stream(served.model, Stream("t1", x), end=n, heads=("forecast",))["forecast"]
    assert got.shape == (n, 4, 7)
    np.testing.assert_allclose(got, offline * served.std + served.mean, rtol=1e-5, atol=1e-4)
