"""A restart on a changelog of a million snapshots and a backlog: the restore runs between polls, so the instance
keeps its place in the group (default session timeout), says how far it is, exports lag, and then processes."""

from __future__ import annotations

import json
import signal
import time
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from lab.local_kafka import free_port_pair
from streamer.kafka.fast_paths import RecordAppender
from streamer.schema import OutRecord
from tests.helpers import LogTail, collect, http_get, send_records, serve_env, serve_in_thread, serve_until, start_serve

T0 = 1_700_000_000_000
STREAMS, PARTITIONS, COPIES, BACKLOG = 1000, 4, 1000, 20


def _readings(t: int) -> list[tuple[bytes, bytes]]:
    return [(f"s{s}".encode(), json.dumps({"stream": f"s{s}", "ts": T0 + 1000 * t, "values": [(s * t) % 5]}).encode())
            for s in range(STREAMS)]


def _snapshots(bootstrap: str, topic: str) -> list[OutRecord]:
    """Every committed record of the changelog, as records to write again."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    found: list[OutRecord] = []
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for recs in consumer.poll(timeout_ms=500).values():
            found += [OutRecord(topic, r.key, r.value, r.partition) for r in recs]
    consumer.close()
    return found


def _write_copies(bootstrap: str, records: list[OutRecord], copies: int) -> None:
    """Each record `copies` times over, fast (the project's own batch appender)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=1 << 20)
    appender = RecordAppender(producer)
    for _ in range(copies):
        appender.append(records)
    producer.flush()
    producer.close()


def _watch_until_ready(port: int, proc, timeout: float) -> tuple[list[str], list[int], list[int]]:
    """/readyz bodies while not ready, and the lag and restore-remaining series counts seen meanwhile."""
    bodies, lag_series, remaining_series = [], [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        status, body = http_get(port, "/readyz")
        if status == 200:
            break
        if status == 503:
            bodies.append(body)
            text = http_get(port, "/metrics")[1]
            lag_series.append(sum(line.startswith("streamer_consumer_lag_records{") for line in text.splitlines()))
            remaining_series.append(sum(line.startswith("streamer_restore_remaining_records{")
                                        for line in text.splitlines()))
        time.sleep(0.25)
    return bodies, lag_series, remaining_series


def test_restart_on_a_million_changelog_records_stays_in_the_group(kafka_bootstrap, new_topic):
    src, out, dead = new_topic("readings", partitions=PARTITIONS), new_topic("out"), new_topic("dead")
    changelog = f"changelog-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)  # one segment: nothing compacts during the test
    admin.create_topics({changelog: {"num_partitions": PARTITIONS, "replication_factor": 1,
                                     "configs": {"cleanup.policy": "compact", "segment.bytes": str(1 << 30)}}})
    admin.close()
    port = free_port_pair()
    env = serve_env(kafka_bootstrap, src, out, dead, STREAMER_KAFKA__CHANGELOG_TOPIC=changelog,
                    STREAMER_MODEL__HIDDEN="4", STREAMER_OUTPUT__ANOMALIES="false",
                    STREAMER_METRICS__PORT=str(port))
    send_records(kafka_bootstrap, src, _readings(0))
    serve_until(env, kafka_bootstrap, [out], STREAMS)
    snapshots = _snapshots(kafka_bootstrap, changelog)
    assert len(snapshots) == STREAMS
    _write_copies(kafka_bootstrap, snapshots, COPIES)  # a million records more, the same state
    for t in range(1, BACKLOG + 1):
        send_records(kafka_bootstrap, src, _readings(t))

    proc = start_serve(env)
    tail = LogTail(proc)
    try:
        bodies, lag_series, remaining_series = _watch_until_ready(port, proc, timeout=240)
        assert http_get(port, "/readyz")[0] == 200, "".join(tail.text)[-3000:]
        got = collect(kafka_bootstrap, [out], STREAMS * (BACKLOG + 1), timeout=180, proc=proc)[out]
        metrics = http_get(port, "/metrics")[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        tail.finish(timeout=60)
    log_text = "".join(tail.text)
    done = [e for e in tail.entries if e.get("msg") == "restored state"]
    print(f"\nrestored {done[0]['records'] if done else '?'} records in {done[0]['seconds'] if done else '?'} s")
    assert proc.returncode == 0, log_text[-3000:]
    assert "Heartbeat session expired" not in log_text and "rewinding" not in log_text
    assert 'streamer_rebalances_total{event="assigned"} 1.0' in metrics, "one assignment, no rebalance loop"
    restored = [line for line in metrics.splitlines() if line.startswith("streamer_restored_records_total ")]
    assert float(restored[0].split()[1]) >= STREAMS * (COPIES + 1)
    # While restoring: 503 with what is left, and lag and restore progress for every partition.
    assert len(bodies) >= 4 and all(b.startswith("not ready: ") for b in bodies), bodies[:3]
    assert any("records left" in b for b in bodies), bodies[:3]
    assert max(lag_series) == PARTITIONS and max(remaining_series) == PARTITIONS
    # The backlog continues every stream's state: its readings are the 2nd to the 21st the stream has seen.
    backlog = [o for o in got if o["ts"] > T0]
    assert len(backlog) == STREAMS * BACKLOG
    assert sorted({o["n"] for o in backlog}) == list(range(2, BACKLOG + 2))
    # The test's changelog has a 1 GiB segment: the daemon says which setting it differs from.
    assert "STREAMER_KAFKA__CHANGELOG_SEGMENT_BYTES" in log_text


def test_a_restore_without_progress_turns_health_red(kafka_bootstrap, new_topic, monkeypatch):
    """A restore that reads nothing for metrics.stall_timeout_s fails /healthz (a stuck instance is restarted);
    once it reads again, health and readiness come back."""
    import threading

    from streamer.config import load_settings
    from streamer.kafka.changelog import ChangelogRestorer
    from streamer.service import Service

    src = new_topic("readings", partitions=2)
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "forecast_topic": new_topic("out"),
               "dead_letter_topic": new_topic("dead"), "group_id": f"g-{run}", "transactional_id": f"tx-{run}"},
        engine={"device": "cpu", "max_wait_ms": 50}, metrics={"port": 0, "stall_timeout_s": 1.5})
    stuck = threading.Event()
    stuck.set()
    real_step = ChangelogRestorer.step

    def step(restorer, *args, **kwargs):
        if stuck.is_set():  # as if the changelog's broker answered nothing
            time.sleep(0.05)
            return [], 0
        return real_step(restorer, *args, **kwargs)

    monkeypatch.setattr(ChangelogRestorer, "step", step)
    service = Service(settings)
    thread = serve_in_thread(service)
    try:
        deadline = time.monotonic() + 60
        while "restoring" not in http_get(service.http.port, "/readyz")[1]:
            assert time.monotonic() < deadline, "no restore began"
            time.sleep(0.1)
        assert http_get(service.http.port, "/healthz")[0] == 200
        time.sleep(2.0)
        assert http_get(service.http.port, "/healthz")[0] == 503
        stuck.clear()
        deadline = time.monotonic() + 30
        while http_get(service.http.port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http_get(service.http.port, "/readyz")[0] == 200
        time.sleep(2.5)  # the lag gauges are refreshed every 2 s: no lag and no restore counts as progress
        assert http_get(service.http.port, "/healthz")[0] == 200
    finally:
        service.stop()
        thread.join(timeout=60)
