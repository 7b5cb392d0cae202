"""`streamer serve` without a broker: endpoints at once, a reason on /readyz, retries, stop on a signal, a deadline.

Every test runs the real command as a child process; the last one starts a real broker 20 s after the daemon.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from lab.local_kafka import LocalKafka
from tests.helpers import LogTail, collect, http_get, serve_env, start_serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_broker_serve(**extra: str) -> tuple[subprocess.Popen, int, str, float]:
    """A `streamer serve` child pointed at a port where nothing listens: (process, http port, bootstrap, start)."""
    bootstrap, http_port = f"127.0.0.1:{_free_port()}", _free_port()
    env = serve_env(bootstrap, "readings", "forecasts", "dead", STREAMER_METRICS__PORT=str(http_port), **extra)
    started = time.monotonic()
    return start_serve(env), http_port, bootstrap, started


def _wait_for(fetch, predicate, timeout: float):
    """The first value of fetch() satisfying predicate within timeout seconds, else the last one."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not predicate(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = fetch()
    return value


def test_health_endpoints_answer_within_a_second_and_readyz_says_why(tmp_path):
    proc, port, bootstrap, started = _no_broker_serve()
    logs = LogTail(proc)
    try:
        health = _wait_for(lambda: http_get(port, "/healthz"), lambda v: v[0] != 0, timeout=30)
        elapsed = time.monotonic() - started
        assert health == (200, "ok\n")
        # Some 0.4 s on an idle machine (Python and pydantic); the bound leaves room for a busy one.
        assert elapsed < 1.5, f"/healthz answered {elapsed:.2f}s after the start"
        # Open before torch is imported and the model loaded, which take seconds.
        assert http_get(port, "/readyz") == (503, "not ready: starting: loading the model\n")
        assert http_get(port, "/metrics")[0] == 200
        # Once torch and the model are loaded: the bootstrap servers and the error, retried with backoff.
        status, body = _wait_for(lambda: http_get(port, "/readyz"), lambda v: "Connection refused" in v[1], timeout=60)
        assert (status, body) == (503, f"not ready: connecting to {bootstrap}: ConnectionRefusedError: "
                                       "[Errno 111] Connection refused\n")
        assert logs.wait_for(lambda e: e.get("attempt") == 3, timeout=30), "three attempts within 0.5 + 1 s"
        assert http_get(port, "/healthz") == (200, "ok\n")
    finally:
        proc.terminate()
        entries = logs.finish(timeout=10)
    attempts = [e for e in entries if "attempt" in e]
    assert all(e["level"] == "warning" and e["bootstrap_servers"] == bootstrap and "refused" in e["error"]
               for e in attempts)
    assert [e["retry_in_s"] for e in attempts[:3]] == [0.5, 1.0, 2.0]
    assert not [e for e in entries if e["logger"].startswith("kafka")], "kafka-python's own logs are quiet"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_waiting_for_the_broker_ends_the_process_within_a_second(signum):
    proc, port, _, _ = _no_broker_serve()
    logs = LogTail(proc)
    try:
        assert logs.wait_for(lambda e: e.get("attempt") == 2, timeout=60), "the daemon retries the broker"
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
        logs.finish(timeout=10)
    assert code == 0
    assert elapsed < 1.0, f"exited {elapsed:.2f}s after {signal.Signals(signum).name}"
    assert http_get(port, "/healthz") == (0, ""), "the port is released"


def test_a_signal_while_the_model_loads_ends_the_process_at_once():
    proc, port, _, _ = _no_broker_serve()
    try:
        assert _wait_for(lambda: http_get(port, "/readyz"), lambda v: v[0] != 0, timeout=30)[0] == 503
        sent = time.monotonic()
        proc.terminate()  # torch is still being imported: the service does not exist yet
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
        stderr = proc.stderr.read()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert elapsed < 1.0, f"exited {elapsed:.2f}s after SIGTERM"


def test_the_startup_deadline_ends_the_process_with_one_line_naming_the_setting():
    proc, _, bootstrap, _ = _no_broker_serve(STREAMER_KAFKA__STARTUP_TIMEOUT_S="2")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    named = [line for line in lines if "STREAMER_KAFKA__BOOTSTRAP_SERVERS" in line]
    assert named == [lines[-1]], stderr
    last = json.loads(named[0])  # STREAMER_LOG_FORMAT=json: the closing error is a JSON line too
    assert last["level"] == "error"
    assert last["msg"] == (f"streamer: STREAMER_KAFKA__BOOTSTRAP_SERVERS: no broker of {bootstrap} answered within "
                           f"STREAMER_KAFKA__STARTUP_TIMEOUT_S=2s (connecting to {bootstrap}: ConnectionRefusedError: "
                           "[Errno 111] Connection refused)")
    attempts = [json.loads(line) for line in lines if '"attempt"' in line]
    assert 2 <= len(attempts) <= 3, "attempts at 0, 0.5 and 1.5 s (the next would be at 3.5 s)"


def test_demo_without_a_broker_ends_after_its_timeout_with_a_clear_message():
    bootstrap = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "demo", "--bootstrap", bootstrap, "--timeout", "3"],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"demo: no Kafka broker at {bootstrap} answered within 3s (ConnectionRefusedError: "
                                   "[Errno 111] Connection refused); start one with `make kafka-up`, or name one "
                                   "with --bootstrap")
    assert 3 <= elapsed < 8, f"took {elapsed:.1f}s"


def test_a_broker_that_appears_20s_after_the_daemon_is_served(tmp_path):
    broker = LocalKafka(tmp_path)  # its ports are chosen now; it starts 20 s after the daemon
    http_port = _free_port()
    src, out, dead = "late-readings", "late-forecasts", "late-dead"
    proc = start_serve(serve_env(broker.bootstrap, src, out, dead, STREAMER_METRICS__PORT=str(http_port),
                                 STREAMER_ENGINE__MAX_WAIT_MS="50"))
    started = time.monotonic()
    logs = LogTail(proc)
    try:
        status, body = _wait_for(lambda: http_get(http_port, "/readyz"), lambda v: v[0] != 0, timeout=30)
        assert status == 503 and body.startswith("not ready: ")  # how soon: test_health_endpoints_answer_...
        assert http_get(http_port, "/healthz") == (200, "ok\n")
        assert logs.wait_for(lambda e: e.get("attempt") and "refused" in e["error"], timeout=30)
        time.sleep(max(0.0, 20 - (time.monotonic() - started)))
        assert proc.poll() is None and http_get(http_port, "/healthz")[0] == 200, "alive after 20 s without a broker"
        broker.up()
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics({src: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True)
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for t in range(5):
            for s in ("pump-1", "pump-2", "pump-3"):
                body = {"stream": s, "ts": 1000 + t, "values": [float(t)]}
                producer.send(src, key=s.encode(), value=json.dumps(body).encode())
        producer.close()
        got = collect(broker.bootstrap, [out], 15, timeout=120, proc=proc)[out]
        assert len(got) == 15 and {(r["stream"], r["n"]) for r in got} == {
            (s, n) for s in ("pump-1", "pump-2", "pump-3") for n in range(1, 6)}
        assert _wait_for(lambda: http_get(http_port, "/readyz"), lambda v: v[0] == 200, timeout=30) == (200, "ready\n")
    finally:
        proc.terminate()
        entries = logs.finish(timeout=30)
        broker.down()
    assert proc.returncode == 0
    assert any(e["msg"] == "serving" for e in entries)


def test_an_input_topic_created_after_the_daemon_started_is_served(kafka_bootstrap, new_topic):
    src, out, dead = f"later-{uuid.uuid4().hex[:10]}", new_topic("later-out"), new_topic("later-dead")
    http_port = _free_port()
    proc = start_serve(serve_env(kafka_bootstrap, src, out, dead, STREAMER_METRICS__PORT=str(http_port),
                                 STREAMER_ENGINE__MAX_WAIT_MS="50"))
    logs = LogTail(proc)
    try:
        status, body = _wait_for(lambda: http_get(http_port, "/readyz"), lambda v: v[0] != 0 and "exist" in v[1],
                                 timeout=60)
        assert (status, body) == (503, f"not ready: preparing the topics on {kafka_bootstrap}: "
                                       f"STREAMER_KAFKA__INPUT_TOPICS: {src} do not exist (yet)\n")
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        admin.create_topics({src: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True)
        admin.close()
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for t in range(3):
            producer.send(src, key=b"pump-1", value=json.dumps({"stream": "pump-1", "ts": 1000 + t,
                                                                 "values": [float(t)]}).encode())
        producer.close()
        got = collect(kafka_bootstrap, [out], 3, timeout=60, proc=proc)[out]
        assert [r["n"] for r in got] == [1, 2, 3]
    finally:
        proc.terminate()
        entries = logs.finish(timeout=30)
        KafkaAdminClient(bootstrap_servers=kafka_bootstrap).delete_topics([src])
    assert proc.returncode == 0
    assert any(e.get("attempt") and "do not exist" in e["error"] for e in entries)
