"""Reliability on the real broker: kill -9 at random instants loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import numpy as np
import pytest
from kafka import KafkaProducer

from tests.helpers import LogTail, collect, collect_all, serve_env, start_serve

pytestmark = pytest.mark.reliability


def _produce_readings(bootstrap: str, topic: str, streams: int, per_stream: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(streams, per_stream)).cumsum(axis=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    for t in range(per_stream):
        for s in range(streams):
            body = {"stream": f"machine-{s}", "ts": 60_000 * t, "values": [float(values[s, t])]}
            producer.send(topic, key=f"machine-{s}".encode(), value=json.dumps(body).encode())
    producer.close()
    return streams * per_stream


def _by_stream(outputs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in outputs:
        out.setdefault(o["stream"], []).append(o)
    return out


def _assert_same_outputs(got: list[dict], want: list[dict]) -> None:
    g, w = _by_stream(got), _by_stream(want)
    assert sorted(g) == sorted(w)
    for stream in w:
        assert [(o["ts"], o["n"]) for o in g[stream]] == [(o["ts"], o["n"]) for o in w[stream]], stream
        np.testing.assert_allclose([o["forecast"] for o in g[stream]], [o["forecast"] for o in w[stream]],
                                   atol=1e-5)


def _run_to_completion(env: dict, bootstrap: str, out: str, total: int, timeout: float = 120,
                       expand: bool = True) -> list[dict]:
    proc = start_serve(env)
    try:
        got = collect(bootstrap, [out], total, timeout=timeout, proc=proc, expand=expand)[out]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if len(got) == total:  # a duplicate would come after the last expected record: wait for one
            got = collect_all(bootstrap, [out], expand=expand)[out]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    return got


@pytest.mark.parametrize(("kills", "records"), [
    pytest.param(5, "batch", id="5-kills-batch"),
    pytest.param(5, "input", id="5-kills-input"),
    pytest.param(20, "batch", id="20-kills-batch", marks=pytest.mark.slow)])
def test_kill9_at_random_instants_equals_uninterrupted_run(kafka_bootstrap, new_topic, kills, records):
    """records="input": the very same forecast records; "batch" (the default, one record per stream per
    batch, grouped by how polls fall): the same forecast for every reading, each exactly once."""
    src = new_topic("readings", partitions=2)
    total = _produce_readings(kafka_bootstrap, src, streams=6, per_stream=900)
    # Small batches: hundreds of transactions, so the kills land between and inside them.
    knobs = {"STREAMER_ENGINE__MAX_BATCH_READINGS": "12", "STREAMER_MODEL__HIDDEN": "16",
             "STREAMER_OUTPUT__FORECAST_RECORDS": records}
    expand = records == "batch"  # input mode: compare the records as published (one per reading here)

    ref_out = new_topic("ref-out")
    reference = _run_to_completion(serve_env(kafka_bootstrap, src, ref_out, new_topic("ref-dead"), **knobs),
                                   kafka_bootstrap, ref_out, total, expand=expand)
    assert len(reference) == total
    assert all(isinstance(r["ts"], int) for r in reference)  # per reading (expanded, or as published)

    out = new_topic("crash-out")
    env = serve_env(kafka_bootstrap, src, out, new_topic("crash-dead"), **knobs,
                    STREAMER_KAFKA__INSTANCE_ID="crash-instance")
    rng = random.Random(1234)
    committed_before_kill = []
    done = 0
    for _ in range(kills):
        proc = start_serve(env)
        # Start-up time varies with load: wait for this instance's first commit, then kill it at random.
        deadline = time.monotonic() + 60
        while done < total and time.monotonic() < deadline and proc.poll() is None:
            if len(collect(kafka_bootstrap, [out], total, timeout=0.5, expand=expand)[out]) > done:
                break
        time.sleep(rng.uniform(0.0, 0.4))  # the whole input takes a few seconds: kill within the work
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        done = len(collect(kafka_bootstrap, [out], total, timeout=2, expand=expand)[out])
        committed_before_kill.append(done)
    final = _run_to_completion(env, kafka_bootstrap, out, total, expand=expand)
    # The kills interrupted real work: some progress was committed before the last kill, not all of it.
    assert any(0 < n < total for n in committed_before_kill), committed_before_kill
    _assert_same_outputs(final, reference)
    assert len(final) == total


def test_survivor_takes_over_a_killed_instances_partitions(kafka_bootstrap, new_topic):
    import threading

    src = new_topic("readings", partitions=4)
    streams, per_stream = 8, 300
    total = streams * per_stream
    knobs = {"STREAMER_ENGINE__MAX_BATCH_READINGS": "16", "STREAMER_MODEL__HIDDEN": "16",
             "STREAMER_KAFKA__SESSION_TIMEOUT_MS": "6000", "STREAMER_KAFKA__TRANSACTION_TIMEOUT_MS": "5000"}
    out = new_topic("pair-out")
    env_a = serve_env(kafka_bootstrap, src, out, new_topic("pair-dead"), **knobs)
    group = env_a["STREAMER_KAFKA__GROUP_ID"]
    env_a.update(STREAMER_KAFKA__TRANSACTIONAL_ID=f"{group}-a", STREAMER_KAFKA__CLIENT_ID="a")
    env_b = dict(env_a, STREAMER_KAFKA__TRANSACTIONAL_ID=f"{group}-b", STREAMER_KAFKA__CLIENT_ID="b")
    a, b = start_serve(env_a), start_serve(env_b)
    tails = {"a": LogTail(a), "b": LogTail(b)}
    # Readings trickle in over ~16 s so that both instances own live partitions when one dies.
    producing = threading.Thread(target=_produce_slowly, args=(kafka_bootstrap, src, streams, per_stream, 16.0))
    producing.start()
    try:
        # Start-up time varies with load: kill `a` once both own partitions (after the group settled).
        for name in ("a", "b"):
            assert tails[name].wait_for(lambda e: e["msg"] == "restored state" and e["partitions"], 90), name
        time.sleep(2.0)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        producing.join()
        got = collect(kafka_bootstrap, [out], total, timeout=120, proc=b)[out]
        assert b.poll() is None, "".join(tails["b"].text)[-3000:]
        if len(got) == total:
            got = collect_all(kafka_bootstrap, [out])[out]
    finally:
        logs = {}
        for name, p in (("a", a), ("b", b)):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            logs[name] = tails[name].finish()
    # The survivor restored state that the killed instance had written to the changelog.
    restores = [e for e in logs["b"] if e["msg"] == "restored state"]
    assert len(restores) >= 2 and restores[-1]["records"] > 0, restores
    ref_out = new_topic("solo-out")
    reference = _run_to_completion(serve_env(kafka_bootstrap, src, ref_out, new_topic("solo-dead"), **knobs),
                                   kafka_bootstrap, ref_out, total)
    _assert_same_outputs(got, reference)
    assert len(got) == total


def _produce_slowly(bootstrap: str, topic: str, streams: int, per_stream: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(streams, per_stream)).cumsum(axis=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    pause = seconds / per_stream
    for t in range(per_stream):
        for s in range(streams):
            body = {"stream": f"machine-{s}", "ts": 60_000 * t, "values": [float(values[s, t])]}
            producer.send(topic, key=f"machine-{s}".encode(), value=json.dumps(body).encode())
        time.sleep(pause)
    producer.close()
