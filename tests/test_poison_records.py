"""No record can stop the daemon: each poison record costs one dead letter that the broker accepts, never the
partition; a commit that keeps failing turns /healthz unhealthy; the order check holds for every kind of model."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from kafka import KafkaConsumer, TopicPartition

from streamer.checkpoints import save
from streamer.config import load_settings
from streamer.models import ModelConfig, build_model
from streamer.schema import dead_letter_original
from streamer.service import Service
from tests.helpers import (
    assert_same_forecasts,
    collect,
    http_get,
    send_records,
    serve_env,
    serve_in_thread,
    serve_until,
)

T0 = 1_700_000_000_000
BIG_TOPIC = {"max.message.bytes": str(8 << 20)}  # an input topic that admits records larger than the daemon takes


def _reading(stream: str, ts: int, *values: float) -> bytes:
    return json.dumps({"stream": stream, "ts": ts, "values": list(values)}).encode()


def _poison() -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, reason) of 30 kinds of malformed record; 'dup' has a valid reading at T0 before them."""
    nested = b"[" * 5000 + b"]" * 5000
    future = T0 + 30 * 86_400_000 * 1000
    return [
        (b"e", None, "empty"),
        (b"z", b"", "empty"),
        (b"o", b'{"stream":"o","ts":1,"values":[' + b"1," * 1_000_000 + b"1]}", "oversize"),  # 2 MB, over 1 MiB
        (b"j", b'{"stream": "j", "ts": 1,', "invalid_json"),
        (b"u", b"\xff\xfe\x00garbage", "invalid_json"),
        (b"U", bytes(range(128, 256)) * 8000, "invalid_json"),  # 1,024,000 bytes of invalid UTF-8, near the limit
        (b"d", nested, "invalid_json"),  # 5,000 deep
        (b"D", b'{"stream":"D","ts":1,"values":' + b"[" * 2000 + b"]" * 2000 + b"}", "invalid_json"),
        (b"x", b"\xef\xbb\xbf" + _reading("x", T0), "invalid_json"),  # a byte-order mark
        (b"l", b"[1, 2, 3]", "invalid_schema"),
        (b"N", b"null", "invalid_schema"),
        (b"s", json.dumps({"stream": "s", "ts": T0}).encode(), "invalid_schema"),
        (b"t", json.dumps({"stream": "t", "ts": "yesterday", "values": [1]}).encode(), "invalid_schema"),
        (b"h", json.dumps({"stream": "h", "ts": 2**70, "values": [1]}).encode(), "invalid_schema"),
        (b"m", json.dumps({"stream": "m", "ts": -5, "values": [1]}).encode(), "invalid_schema"),
        (b"L", json.dumps({"stream": "L" * 300, "ts": T0, "values": [1]}).encode(), "invalid_schema"),
        (b"C", json.dumps({"stream": "C", "ts": [], "values": []}).encode(), "invalid_schema"),
        (b"X", json.dumps({"stream": "X", "ts": T0, "values": [1], "extra": 1}).encode(), "invalid_schema"),
        (b"v", json.dumps({"v": 2, "stream": "v", "ts": T0, "values": [1.0]}).encode(), "unknown_version"),
        (b"w", _reading("w", T0, 1.0, 2.0, 3.0), "wrong_shape"),
        (b"W", _reading("W", T0), "wrong_shape"),
        (b"c", json.dumps({"stream": "c", "ts": [T0, T0 + 1], "values": [[1.0]]}).encode(), "wrong_shape"),
        (b"n", json.dumps({"stream": "n", "ts": T0, "values": {"temp": 1.0}}).encode(), "named_channels_unsupported"),
        (b"f", b'{"stream": "f", "ts": 1700000000000, "values": [NaN]}', "non_finite"),
        (b"g", b'{"stream": "g", "ts": 1700000000000, "values": [1e39]}', "non_finite"),
        (b"r", json.dumps({"stream": "r", "ts": [T0 + 5, T0 + 3], "values": [[1.0], [2.0]]}).encode(),
         "unordered_chunk"),
        (b"p", _reading("p", 5, 1.0), "ts_too_old"),
        (b"q", _reading("q", future, 1.0), "ts_in_future"),
        (b"k", _reading("other", T0, 1.0), "key_mismatch"),
        (b"K" * 100_000, _reading("K", T0, 1.0), "key_mismatch"),  # a 100 KB key
        (b"dup", _reading("dup", T0, 0.5), "duplicate_ts"),
        (b"dup", _reading("dup", T0 - 1000, 0.5), "out_of_order"),
    ]


def _committed_to_the_end(bootstrap: str, group: str, topic: str) -> tuple[dict, dict]:
    """The group's committed offset and the end offset of each partition of `topic`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    committed = {tp.partition: consumer.committed(tp) for tp in parts}
    end = {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
    consumer.close(autocommit=False)
    return committed, end


def test_poison_records_cost_one_dead_letter_each(kafka_bootstrap, new_topic):
    streams, per_stream = 6, 25
    valid = [(b"dup", _reading("dup", T0, 0.5))]
    valid += [(f"m{s}".encode(), _reading(f"m{s}", T0 + 1000 * t, float((s + 1) * t % 7)))
              for t in range(per_stream) for s in range(streams)]
    bad = _poison()
    assert len({reason for *_, reason in bad}) >= 14 and len(bad) >= 30
    mixed = list(valid[:streams + 1])  # every stream's first reading, then one bad record after each valid one
    for i, rec in enumerate(valid[streams + 1:]):
        mixed.append(rec)
        if i < len(bad):
            mixed.append(bad[i][:2])
    knobs = {"STREAMER_ENGINE__MIN_TS_MS": str(T0 - 86_400_000), "STREAMER_ENGINE__MAX_BATCH_READINGS": "40"}

    src = new_topic("poison", partitions=2, configs=BIG_TOPIC)
    send_records(kafka_bootstrap, src, mixed)
    out, dead = new_topic("out"), new_topic("dead")  # the dead-letter topic keeps the broker's 1 MB limit
    env = serve_env(kafka_bootstrap, src, out, dead, **knobs)
    got = serve_until(env, kafka_bootstrap, [out, dead], len(valid) + len(bad))
    assert len(got[out]) == len(valid) and len(got[dead]) == len(bad)

    want = sorted(reason for *_, reason in bad)
    assert sorted(d["reason"] for d in got[dead]) == want
    by_key = {(key if len(key) <= 1024 else hashlib.sha256(key).digest(), value): reason
              for key, value, reason in bad if value is not None}
    for d in got[dead]:
        assert d["topic"] == src and d["offset"] >= 0 and d["detail"] and len(d["detail"]) <= 1100
        original = dead_letter_original(d)
        if original is None:
            assert d["reason"] == "empty"
            continue
        assert len(original) == min(d["original_size"], 65_536)
        assert d["original_truncated"] == (d["original_size"] > 65_536)
        whole = [v for (_, v) in by_key if v is not None and hashlib.sha256(v).hexdigest() == d["original_sha256"]]
        assert whole and whole[0].startswith(original), d["reason"]
    committed, end = _committed_to_the_end(kafka_bootstrap, env["STREAMER_KAFKA__GROUP_ID"], src)
    assert committed == end

    clean = new_topic("clean", partitions=2, configs=BIG_TOPIC)
    send_records(kafka_bootstrap, clean, valid)
    ref_out = new_topic("ref-out")
    reference = serve_until(serve_env(kafka_bootstrap, clean, ref_out, new_topic("ref-dead"), **knobs),
                            kafka_bootstrap, [ref_out], len(valid))[ref_out]
    assert_same_forecasts(got[out], reference)


def _in_thread(settings) -> tuple[Service, threading.Thread]:
    service = Service(settings)
    return service, serve_in_thread(service)


def test_a_commit_that_keeps_failing_turns_health_red(kafka_bootstrap, new_topic):
    """Forecast records the topic refuses (its max.message.bytes is tiny): the loop retries the same work with
    backoff, and after the configured number of failed commits in a row /healthz says 503 and the gauge why."""
    src, dead = new_topic("readings"), new_topic("dead")
    out = new_topic("tiny", configs={"max.message.bytes": "600"})
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "forecast_topic": out,
               "dead_letter_topic": dead, "group_id": f"g-{run}", "transactional_id": f"tx-{run}"},
        engine={"device": "cpu", "max_wait_ms": 50}, metrics={"port": 0, "unhealthy_after_failed_commits": 2},
        model={"checkpoint": "random"})
    service, thread = _in_thread(settings)
    try:
        assert http_get(service.http.port, "/healthz")[0] == 200
        chunk = {"stream": "s", "ts": [T0 + i for i in range(100)], "values": [[float(i)] for i in range(100)]}
        send_records(kafka_bootstrap, src, [(b"s", json.dumps(chunk).encode())])
        deadline = time.monotonic() + 60
        while (service.failed_commits_in_row < 2 or service.stats.rewinds < 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.failed_commits_in_row >= 2 and service.stats.rewinds >= 2
        assert http_get(service.http.port, "/healthz")[0] == 503
        text = service.metrics.render().decode()
        assert "streamer_failed_commits_in_row 2.0" in text or "streamer_failed_commits_in_row 3.0" in text
        assert thread.is_alive()
    finally:
        service.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()


def _event_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=1, hidden=4, heads=("event",)))
    return save(directory, model, {"features": {"numeric": ["x"], "categorical": [], "label": "on"}, "horizon": 1,
                                   "name": "events", "normalization": {"mean": [0.0], "std": [1.0]},
                                   "thresholds": {"score": "event_probability", "event": 0.5}})


def test_an_event_only_model_refuses_duplicate_and_late_readings(kafka_bootstrap, new_topic, tmp_path):
    src, dead = new_topic("readings"), new_topic("dead")
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "forecast_topic": new_topic("out"),
               "event_topic": new_topic("events"), "dead_letter_topic": dead, "group_id": f"g-{run}",
               "transactional_id": f"tx-{run}"},
        model={"checkpoint": str(_event_checkpoint(tmp_path / "events"))},
        engine={"device": "cpu", "max_wait_ms": 50}, metrics={"port": 0})
    service, thread = _in_thread(settings)
    try:
        send_records(kafka_bootstrap, src, [(b"s", _reading("s", T0 + 1000 * t, float(t))) for t in range(5)])
        deadline = time.monotonic() + 60
        while service.stats.readings < 5 and time.monotonic() < deadline:  # a first batch, committed
            time.sleep(0.05)
        assert service.stats.readings == 5
        late = [(b"s", _reading("s", T0 + 4000, 9.0)), (b"s", _reading("s", T0 + 2000, 9.0)),
                (b"s", _reading("s", T0 + 5000, 9.0))]
        send_records(kafka_bootstrap, src, late)
        got = collect(kafka_bootstrap, [dead], 2, timeout=60)[dead]
        deadline = time.monotonic() + 30
        while service.stats.readings < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        service.stop()
        thread.join(timeout=60)
    assert [d["reason"] for d in got] == ["duplicate_ts", "out_of_order"]
    assert service.stats.readings == 6


@pytest.mark.parametrize("size", [0, 1])
def test_dead_letter_counters_exist_before_any_dead_letter(size):
    """Prometheus' increase() sees the first dead letter of a reason only if the series existed at zero."""
    from streamer.metrics import Metrics
    from streamer.schema import DEAD_LETTER_REASONS

    metrics = Metrics()
    if size:
        metrics.dead_letters.labels("empty").inc()
    text = metrics.render().decode()
    for reason in DEAD_LETTER_REASONS:
        want = 1.0 if size and reason == "empty" else 0.0
        assert f'streamer_dead_letters_total{{reason="{reason}"}} {want}' in text


def test_a_chunk_of_40k_readings_gets_forecast_records_the_topic_accepts(kafka_bootstrap, new_topic):
    """One record of 40,000 readings (700 KB): its forecasts (1.4 MB as one record) come in several records."""
    src, out, dead = new_topic("readings"), new_topic("out"), new_topic("dead")
    n = 40_000
    chunk = json.dumps({"stream": "g", "ts": [T0 + i for i in range(n)], "values": [[i % 10] for i in range(n)]})
    assert len(chunk) < 1_000_000
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "forecast_topic": out,
               "dead_letter_topic": dead, "group_id": f"g-{run}", "transactional_id": f"tx-{run}"},
        engine={"device": "cpu", "max_wait_ms": 50}, output={"anomalies": False}, metrics={"port": 0},
        model={"checkpoint": "random"})
    service, thread = _in_thread(settings)
    try:
        send_records(kafka_bootstrap, src, [(b"g", chunk.encode())])
        assert len(collect(kafka_bootstrap, [out], n, timeout=120)[out]) == n
        got = collect(kafka_bootstrap, [out], n, timeout=3, expand=False)[out]  # the records as published
    finally:
        service.stop()
        thread.join(timeout=60)
    assert service.failed_commits_in_row == 0 and service.stats.rewinds == 0
    assert [i for r in got for i in r["n"]] == list(range(1, n + 1))
    assert len(got) > 4 and all(len(json.dumps(r)) <= 262_144 for r in got)
