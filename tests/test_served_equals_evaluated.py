"""Served = evaluated: a checkpoint from `streamer train` is served with the anomaly pipeline `streamer eval nab`
evaluates it with (settings > its `detectors` metadata > the product default), and the alerts the daemon publishes
for a shipped NAB series are the ones the offline evaluation path reports for it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from lab.evaluation import nab
from lab.evaluation import nab_scorer as ns
from streamer import checkpoints
from streamer.config import load_settings
from streamer.detection import PRODUCT_PIPELINE, pipeline_config
from streamer.errors import ConfigError
from streamer.model_source import load_checkpoint, served_model
from streamer.service import Service
from tests.helpers import collect, collect_all, parse_cli, send_records
from training.pipeline import run as train

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "nab"
FILE = "realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv"
ROWS = 2500
# [detectors] of the training config: written into the checkpoint, over the product default
TRAINED = {"likelihood_warmup": 150, "suppress": 50}
# what the daemon's settings override at serve time (and `eval nab` takes from the same settings)
SERVED = {"alert_on": 0.45}

TOML = """
[data]
path = "{path}"
time_column = "timestamp"
numeric = ["value"]
[split]
val_fraction = 0.15
test_fraction = 0.15
[model]
family = "gru"
hidden = 4
[train]
epochs = 1
batch = 4
tbptt = 32
[detectors]
likelihood_warmup = 150
suppress = 50
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NAB-layout folder with the first ROWS rows of one shipped series, and a checkpoint trained on it."""
    root = tmp_path_factory.mktemp("served")
    lines = (SHIPPED / FILE).read_text().splitlines()[: ROWS + 1]
    data = root / "nab" / "data" / FILE
    data.parent.mkdir(parents=True)
    data.write_text("\n".join(lines) + "\n")
    (root / "nab" / "labels").mkdir()
    stamps = [ln.split(",")[0] for ln in lines[1:]]
    (root / "nab" / "labels" / "combined_windows.json").write_text(
        json.dumps({FILE: [[stamps[1800] + ".000000", stamps[2000] + ".000000"]]}))
    (root / "train.toml").write_text(TOML.format(path=data))
    train(root / "train.toml", root / "run", progress=False)
    return root


def test_the_setting_wins_over_the_checkpoint_which_wins_over_the_default() -> None:
    settings = load_settings(detectors={"alert_on": 0.7, "season_ms": 0}).detectors
    got = pipeline_config(settings, {"alert_on": 0.6, "short": 4})
    assert (got.alert_on, got.season_ms, got.short) == (0.7, 0, 4)
    assert got.value_short == PRODUCT_PIPELINE.value_short and got.dt_window == PRODUCT_PIPELINE.dt_window == 0
    assert pipeline_config(load_settings().detectors, None) == PRODUCT_PIPELINE
    with pytest.raises(ConfigError, match="unknown fields \\['nope'\\]"):
        pipeline_config(settings, {"nope": 1})


def test_detector_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_DETECTORS__VALUE_SHORT", "0")
    monkeypatch.setenv("STREAMER_DETECTORS__LIKELIHOOD_WARMUP", "30")
    got = pipeline_config(load_settings().detectors, {"likelihood_warmup": 100})
    assert (got.value_short, got.likelihood_warmup) == (0, 30)
    monkeypatch.setenv("STREAMER_DETECTORS__ALERT_ON", "2")
    with pytest.raises(ConfigError, match="STREAMER_DETECTORS__ALERT_ON"):
        load_settings()


def test_streamer_train_writes_the_pipeline_into_the_checkpoint(folder: Path) -> None:
    meta = checkpoints.read_meta(folder / "run" / "checkpoint")
    assert meta["detectors"] == {**PRODUCT_PIPELINE.to_dict(), **TRAINED}
    bad = (folder / "train.toml").read_text().replace("suppress = 50", "suppres = 50")
    (folder / "bad.toml").write_text(bad)
    with pytest.raises(ConfigError, match="unknown keys \\['suppres'\\]"):
        train(folder / "bad.toml", folder / "bad", progress=False)


def test_eval_nab_with_a_checkpoint_reports_the_pipeline_it_used(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMER_DETECTORS__ALERT_ON", str(SERVED["alert_on"]))
    out = folder / "eval"
    args = parse_cli(["eval", "nab", "--data", str(folder / "nab"), "--out", str(out), "--checkpoint",
                  str(folder / "run" / "checkpoint"), "--json", "--quiet", "--no-plots"])
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["detectors"] == {**PRODUCT_PIPELINE.to_dict(), **TRAINED, **SERVED}
    assert summary["checkpoint"]["version"] == load_checkpoint(folder / "run" / "checkpoint").version
    assert summary["pretrain_seconds"] == 0 and summary["rows"] == ROWS
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"] == 1


def _serve(settings) -> tuple[Service, threading.Thread]:
    service = Service(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return service, thread


def test_served_alerts_equal_the_evaluated_ones(folder: Path, kafka_bootstrap: str, new_topic) -> None:
    src, alerts, out, dead = (new_topic(n) for n in ("readings", "alerts", "forecasts", "dead"))
    run = uuid.uuid4().hex[:8]
    ckpt = folder / "run" / "checkpoint"
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "forecast_topic": out,
               "alert_topic": alerts, "dead_letter_topic": dead, "group_id": f"g-{run}",
               "transactional_id": f"tx-{run}"},
        model={"checkpoint": str(ckpt), "reload_interval_s": 0}, engine={"device": "cpu", "max_wait_ms": 50},
        output={"forecast_every": 1000}, metrics={"enabled": False}, detectors=SERVED)
    # offline: the evaluation path of `streamer eval nab --checkpoint`, with the pipeline it decides
    series = nab.load_series(ns.load_corpus(folder / "nab"), folder / "nab")
    served = load_checkpoint(ckpt)
    pipeline = pipeline_config(settings.detectors, served.detectors)
    assert (pipeline.likelihood_warmup, pipeline.suppress, pipeline.alert_on) == (150, 50, 0.45)
    want = nab.stream_served(series, served, pipeline, chunk=97)[FILE]["alerts"]
    assert sum(a["state"] == "firing" for a in want) >= 2, "the comparison needs alerts to compare"

    s = series[0]
    records = [(s.name.encode(), json.dumps({"stream": s.name, "ts": s.ts[a : a + 50].tolist(),
                                              "values": [[v] for v in s.values[a : a + 50].tolist()]}).encode())
               for a in range(0, len(s.ts), 50)]
    service, thread = _serve(settings)
    try:
        send_records(kafka_bootstrap, src, records)
        got = collect(kafka_bootstrap, [alerts], len(want), timeout=60)[alerts]
        deadline = time.monotonic() + 30
        while service.stats.readings < ROWS and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        service.stop()
        thread.join(timeout=60)
    assert service.stats.readings == ROWS
    got = collect_all(kafka_bootstrap, [alerts])[alerts]  # all of them, nothing more
    assert got == json.loads(json.dumps(want))


def test_a_checkpoint_with_an_unreadable_pipeline_is_refused_before_serving(folder: Path, tmp_path: Path) -> None:
    model, meta = checkpoints.load(folder / "run" / "checkpoint")
    checkpoints.save(tmp_path / "ckpt", model, {**meta, "detectors": {"alert_onn": 0.4}})
    with pytest.raises(ConfigError, match="unknown fields \\['alert_onn'\\]"):
        served_model(load_settings(model={"checkpoint": str(tmp_path / "ckpt")}), "cpu")
