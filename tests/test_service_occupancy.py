"""An occupancy model from `streamer train`, served by the daemon on the real broker: the onsets and offsets it
publishes for the test minutes are those `streamer eval occupancy` finds offline through the engine."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaProducer

from lab.evaluation import occupancy as occ
from streamer.config import load_settings
from streamer.model_source import load_checkpoint
from streamer.service import Service
from tests.helpers import collect, collect_all, first_rows
from training.data import FeatureSpec, load_csv

DATA = Path(__file__).resolve().parents[1] / "data" / "occupancy"
CHANNELS = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]


@pytest.fixture(scope="module")
def occupancy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from training.pipeline import run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("occ-serve")
    train = first_rows(DATA / "datatraining.txt", root / "train.txt", 2400)
    test = first_rows(DATA / "datatest.txt", root / "test.txt", 1200)  # 02-02 14:19 to 02-03 10:19
    cfg = {"data": {"path": str(train), "test_path": str(test), "time_column": "date", "numeric": CHANNELS,
                    "label": "Occupancy"},
           "split": {"val_fraction": 0.15}, "model": {"family": "gru", "hidden": 8},
           "train": {"epochs": 4, "batch": 8, "tbptt": 32, "lr": 0.01, "pos_weight": 1.0, "seed": 0, "refit": True}}
    run(cfg, root / "out", progress=False)
    return {"checkpoint": root / "out" / "checkpoint", "test": test}


def test_daemon_publishes_the_events_eval_finds(kafka_bootstrap, new_topic, occupancy_checkpoint) -> None:
    ckpt = occupancy_checkpoint["checkpoint"]
    served = load_checkpoint(ckpt)
    s = load_csv(occupancy_checkpoint["test"], FeatureSpec(tuple(CHANNELS), (), "Occupancy"), "date")[0]
    offline = occ.stream_test(served, s.ts, s.values, occ.EventSettings(min_on=1, min_off=1),
                              served.event_threshold)
    expected = [(m["type"], m["start"], m["end"], m["ts"]) for m in offline["messages"]]
    assert len(expected) >= 3, expected  # an offset in the evening and an onset in the morning at least

    src, events, forecasts, dead = (new_topic(n) for n in ("readings", "events", "forecasts", "dead"))
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "forecast_topic": forecasts,
               "event_topic": events, "alert_topic": new_topic("alerts"), "dead_letter_topic": dead,
               "group_id": f"g-{run}", "transactional_id": f"tx-{run}"},
        model={"checkpoint": str(ckpt)}, engine={"device": "cpu", "max_wait_ms": 50},
        output={"anomalies": False}, metrics={"port": 0})
    service = Service(settings)
    ev = service.detectors.events  # the defaults: the calibrated threshold, decided reading by reading
    assert (ev.on, ev.off, ev.min_on, ev.min_off) == (served.event_threshold, served.event_threshold, 1, 1)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
        for t, row in zip(s.ts.tolist(), s.values.tolist(), strict=True):  # one reading a record, named channels
            body = {"stream": "room-1", "ts": t, "values": dict(zip(CHANNELS, row, strict=True))}
            producer.send(src, key=b"room-1", value=json.dumps(body).encode())
        producer.close()
        got = collect(kafka_bootstrap, [events, dead], len(expected), timeout=90)
        deadline = time.monotonic() + 60
        while service.stats.readings < len(s) and time.monotonic() < deadline:  # every reading stepped
            time.sleep(0.1)
        time.sleep(1.0)  # the last batch's transaction is committed within the commit interval
        got = collect_all(kafka_bootstrap, [events, dead])  # and nothing more
    finally:
        service.stop()
        thread.join(timeout=30)
    assert service.stats.readings == len(s) and got[dead] == []
    published = [(m["type"], m["start"], m["end"], m["ts"]) for m in got[events]]
    assert published == expected
    for a, b in zip(got[events], offline["messages"], strict=True):
        assert a["stream"] == "room-1" and a["kind"] == "event"
        assert np.isclose(a["confidence"], b["confidence"], atol=1e-5)
