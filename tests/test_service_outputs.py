"""Alerts and events published by a running service on the real broker."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import torch
from kafka import KafkaProducer

from streamer.config import load_settings
from streamer.models import ModelConfig, build_model
from streamer.service import Service
from tests.helpers import as_records, collect, per_reading

T0 = 1_700_000_000_000


def _settings(bootstrap, src, topics: dict[str, str], **output):
    run = uuid.uuid4().hex[:8]
    return load_settings(
        kafka={"bootstrap_servers": bootstrap, "input_topics": [src], "forecast_topic": topics["forecast"],
               "alert_topic": topics["alert"], "event_topic": topics["event"], "dead_letter_topic": topics["dead"],
               "group_id": f"g-{run}", "transactional_id": f"tx-{run}"},
        model={"checkpoint": "random", "family": "gru", "n_features": 1, "hidden": 8, "seed": 3},
        engine={"device": "cpu", "max_wait_ms": 50},
        output=output,
        metrics={"port": 0},
    )


def _topics(new_topic) -> dict[str, str]:
    return {k: new_topic(k) for k in ("forecast", "alert", "event", "dead")}


def _run(settings, model=None) -> tuple[Service, threading.Thread]:
    service = Service(settings, model=model)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return service, thread


def _send(bootstrap, topic, stream, values, start=0):
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    for i, v in enumerate(values):
        body = {"stream": stream, "ts": T0 + 60_000 * (start + i), "values": [float(v)]}
        producer.send(topic, key=stream.encode(), value=json.dumps(body).encode())
    producer.close()


def test_a_spike_fires_one_alert_that_resolves(kafka_bootstrap, new_topic):
    src, topics = new_topic("readings"), _topics(new_topic)
    service, thread = _run(_settings(kafka_bootstrap, src, topics))
    rng = np.random.default_rng(0)
    values = np.sin(np.arange(900) / 10) + 0.05 * rng.normal(size=900)
    values[600:604] += 25.0  # a spike well after the detectors' warm-up
    try:
        _send(kafka_bootstrap, src, "pump-1", values)
        got = collect(kafka_bootstrap, [topics["forecast"], topics["alert"]], 900 + 2, timeout=90)
        time.sleep(1)
        alerts = collect(kafka_bootstrap, [topics["alert"]], 10_000, timeout=3)[topics["alert"]]
    finally:
        service.stop()
        thread.join(timeout=30)
    assert len(got[topics["forecast"]]) == 900
    firing = [a for a in alerts if a["state"] == "firing"]
    assert len(firing) == 1, alerts
    a = firing[0]
    assert T0 + 60_000 * 600 <= a["start_ts"] <= T0 + 60_000 * 606
    assert a["id"] == f"pump-1:anomaly:{a['start_ts']}" and a["severity"] in ("warning", "critical")
    assert a["model"] == service.served.name and a["version"] == service.served.version
    resolved = [x for x in alerts if x["state"] == "resolved"]
    assert [x["id"] for x in resolved] == [a["id"]] and resolved[0]["end_ts"] > a["start_ts"]
    assert service.metrics.registry.get_sample_value("streamer_alerts_firing") == 0


def _switch_model() -> torch.nn.Module:
    """One tanh unit that follows the input, and an event head that is on when the reading is positive."""
    model = build_model(ModelConfig(family="rnn", n_features=1, hidden=1, heads=("forecast", "event"), horizon=1))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.rnn.weight_ih_l0.fill_(5.0)
        model.heads["event"].weight.fill_(10.0)
    return model.eval()


def test_event_head_onsets_and_offsets_and_silence(kafka_bootstrap, new_topic):
    src, topics = new_topic("readings"), _topics(new_topic)
    settings = _settings(kafka_bootstrap, src, topics, anomalies=False, silent_after_s=2.0)
    service, thread = _run(settings, model=_switch_model())
    values = [-1.0] * 20 + [1.0] * 30 + [-1.0] * 20
    try:
        _send(kafka_bootstrap, src, "door", values)
        events = collect(kafka_bootstrap, [topics["event"]], 3, timeout=60)[topics["event"]]
        _send(kafka_bootstrap, src, "door", [-1.0], start=len(values))  # back after the silence
        events = collect(kafka_bootstrap, [topics["event"]], 4, timeout=30)[topics["event"]]
    finally:
        service.stop()
        thread.join(timeout=30)
    kinds = [(e["kind"], e["type"]) for e in events]
    assert kinds == [("event", "onset"), ("event", "offset"), ("silence", "onset"), ("silence", "offset")], events
    onset, offset = events[0], events[1]
    assert onset["start"] == T0 + 60_000 * 20 and offset["end"] == T0 + 60_000 * 50
    assert onset["confidence"] > 0.9 and events[2]["start"] == T0 + 60_000 * (len(values) - 1)


def _save(directory, hidden: int, seed: int, mean: float = 10.0, std: float = 2.0) -> None:
    from streamer.checkpoints import save

    torch.manual_seed(seed)
    model = build_model(ModelConfig(family="gru", n_features=1, hidden=hidden, heads=("forecast",), horizon=2))
    save(directory, model, {"features": {"numeric": ["level"]}, "normalization": {"mean": [mean], "std": [std]},
                            "horizon": 2, "name": "pump-forecaster"})


def test_checkpoint_is_served_and_hot_reloaded(kafka_bootstrap, new_topic, tmp_path):
    src, topics = new_topic("readings"), _topics(new_topic)
    ckpt = tmp_path / "model"
    _save(ckpt, hidden=8, seed=1)
    settings = _settings(kafka_bootstrap, src, topics, anomalies=False).model_copy(deep=True)
    settings.model.checkpoint = str(ckpt)
    settings.model.reload_interval_s = 0.2
    service, thread = _run(settings)
    fc = topics["forecast"]
    try:
        first_version = service.served.version
        _send(kafka_bootstrap, src, "p", [10.0, 11.0, 12.0])
        got = collect(kafka_bootstrap, [fc], 3, timeout=60)[fc]
        _save(ckpt, hidden=8, seed=2)  # same architecture: states are kept
        deadline = time.monotonic() + 20
        while service.served.version == first_version and time.monotonic() < deadline:
            time.sleep(0.1)
        second_version = service.served.version
        _send(kafka_bootstrap, src, "p", [13.0, 14.0], start=3)
        got = collect(kafka_bootstrap, [fc], 5, timeout=60)[fc]
        _save(ckpt, hidden=4, seed=3)  # another architecture: states start afresh
        while service.served.version == second_version and time.monotonic() < deadline + 20:
            time.sleep(0.1)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        producer.send(src, key=b"p", value=json.dumps(  # named channels, mapped through the feature names
            {"stream": "p", "ts": T0 + 60_000 * 5, "values": {"level": 15.0}}).encode())
        producer.close()
        got = collect(kafka_bootstrap, [fc], 6, timeout=60)[fc]
    finally:
        service.stop()
        thread.join(timeout=30)
    assert first_version != second_version != service.served.version
    assert [o["version"] for o in got] == [first_version] * 3 + [second_version] * 2 + [service.served.version]
    assert [o["n"] for o in got] == [1, 2, 3, 4, 5, 1]
    assert {o["model"] for o in got} == {"pump-forecaster"}
    assert all(len(o["forecast"]) == 2 for o in got)  # two steps ahead, in the input's units
    one = got[0]["forecast"][0][0]
    assert 4.0 < one < 16.0  # de-normalised around the training mean of 10 (std 2), not around 0
    assert service.stats.reloads == 2


def test_input_topics_by_pattern(kafka_bootstrap, new_topic):
    run = uuid.uuid4().hex[:6]
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    names = [f"plant{run}-{i}" for i in range(2)]
    admin.create_topics({n: {"num_partitions": 2, "replication_factor": 1} for n in names}, wait_for_metadata=True)
    admin.close()
    topics = _topics(new_topic)
    settings = _settings(kafka_bootstrap, names[0], topics, anomalies=False).model_copy(deep=True)
    settings.kafka.input_pattern = f"plant{run}-.*"
    service, thread = _run(settings)
    try:
        _send(kafka_bootstrap, names[0], "a", [1.0, 2.0])
        _send(kafka_bootstrap, names[1], "b", [3.0])
        got = collect(kafka_bootstrap, [topics["forecast"]], 3, timeout=60)[topics["forecast"]]
    finally:
        service.stop()
        thread.join(timeout=30)
    assert sorted((o["stream"], o["n"]) for o in got) == [("a", 1), ("a", 2), ("b", 1)]
    assert service.input_topics() == names


def test_forecast_cadence_mirrors_input_records_however_polls_fall():
    """forecast_records="input": the same records, whichever way the polls fall."""
    bodies = [{"stream": "m", "ts": [1, 2, 3, 4, 5], "values": [[0.1], [0.2], [0.3], [0.4], [0.5]]},
              {"stream": "m", "ts": 6, "values": [0.6]},
              {"stream": "m", "ts": [7, 8], "values": [[0.7], [0.8]]},
              {"stream": "m", "ts": 9, "values": [0.9]},
              {"stream": "m", "ts": [10, 11, 12, 13, 14, 15, 16], "values": [[1.0]] * 7}]

    def published(polls: list[list[dict]]) -> list[bytes]:
        settings = load_settings(model={"checkpoint": "random", "family": "lstm", "n_features": 1, "hidden": 4},
                                 engine={"device": "cpu"},
                                 output={"forecast_every": 3, "anomalies": False, "forecast_records": "input"},
                                 metrics={"enabled": False})
        service = Service(settings)
        for poll in polls:
            service.process(as_records(poll))
        return [r.value for r in service.pending_records()]

    one_poll = published([bodies])
    got = [json.loads(v) for v in one_poll]
    # Record by record: the very same records, forecasts equal up to float32 rounding (torch's CPU GEMM
    # kernels, from 2.15 on, round a row differently depending on how many rows are in the call).
    apart = [json.loads(v) for v in published([[b] for b in bodies])]
    assert [{k: v for k, v in g.items() if k != "forecast"} for g in apart] == [
        {k: v for k, v in g.items() if k != "forecast"} for g in got]
    for a, g in zip(apart, got, strict=True):
        np.testing.assert_allclose(a["forecast"], g["forecast"], rtol=1e-5, atol=1e-7)
    assert [(g["ts"], g["n"]) for g in got] == [([3], [3]), (6, 6), (9, 9), ([12, 15], [12, 15])]
    assert [len(g["forecast"]) for g in got if isinstance(g["ts"], list)] == [1, 2]


def test_batch_forecast_records_hold_one_stream_per_batch_and_equal_input_mode_per_reading():
    """forecast_records="batch" (the default): one record per stream per poll; per reading the same forecasts."""
    rng = np.random.default_rng(3)
    bodies = []
    for t in range(1, 41):
        for s in ("a", "b", "c"):
            bodies.append({"stream": s, "ts": t, "values": [float(rng.normal())]})

    def published(mode: str, polls: list[list[dict]]) -> list[dict]:
        settings = load_settings(model={"checkpoint": "random", "family": "gru", "n_features": 1, "hidden": 4,
                                        "seed": 1},
                                 engine={"device": "cpu"},
                                 output={"forecast_every": 2, "anomalies": False, "forecast_records": mode},
                                 metrics={"enabled": False})
        service = Service(settings)
        for poll in polls:
            service.process(as_records(poll))
        return [json.loads(r.value) for r in service.pending_records()]

    polls = [bodies[i : i + 30] for i in range(0, len(bodies), 30)]
    batch = published("batch", polls)
    assert len(batch) == 3 * len(polls)  # every stream has readings in every poll
    assert all(isinstance(r["ts"], list) for r in batch)
    by_input = published("input", polls)
    assert len(by_input) == 60  # every 2nd of 120 readings
    assert per_reading(batch) != [] and sorted(map(json.dumps, per_reading(batch))) == sorted(
        map(json.dumps, by_input))
