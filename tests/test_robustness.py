"""Bad input, a flood of stream ids and a broker restart, each against a real broker and a `streamer serve` child."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer

from lab.local_kafka import LocalKafka, free_port_pair
from streamer.schema import dead_letter_original
from tests.helpers import (
    LogTail,
    assert_same_forecasts,
    collect,
    collect_all,
    send_records,
    serve_env,
    serve_until,
    start_serve,
)

pytestmark = pytest.mark.reliability
T0 = 1_700_000_000_000  # readings are stamped in ms since the epoch, like real ones


def _valid_readings(streams: int, per_stream: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(streams, per_stream)).cumsum(axis=1)
    return [(f"m{s}".encode(), json.dumps({"stream": f"m{s}", "ts": T0 + 1000 * t, "values": [values[s, t]]}).encode())
            for t in range(per_stream) for s in range(streams)]


def _bad_records(n: int) -> list[tuple[tuple[bytes | None, bytes | None], str]]:
    """n malformed records of 15 kinds, each with the reason the daemon must give."""
    future = T0 + 30 * 86_400_000 * 1000  # far beyond the wall clock
    kinds = [
        (lambda i: (b"e", None), "empty"),
        (lambda i: (b"o", json.dumps({"stream": "o", "ts": T0, "values": [1.0] * 600}).encode()), "oversize"),
        (lambda i: (b"j", b'{"stream": "j", "ts": 1,'), "invalid_json"),
        (lambda i: (b"u", b"\xff\xfe\x00garbage"), "invalid_json"),
        (lambda i: (b"s", json.dumps({"stream": "s", "ts": T0}).encode()), "invalid_schema"),
        (lambda i: (b"t", json.dumps({"stream": "t", "ts": "yesterday", "values": [1]}).encode()), "invalid_schema"),
        (lambda i: (b"v", json.dumps({"v": 2, "stream": "v", "ts": T0, "values": [1.0]}).encode()), "unknown_version"),
        (lambda i: (b"w", json.dumps({"stream": "w", "ts": T0, "values": [1.0, 2.0, 3.0]}).encode()), "wrong_shape"),
        (lambda i: (b"c", json.dumps({"stream": "c", "ts": [T0, T0 + 1], "values": [[1.0]]}).encode()), "wrong_shape"),
        (lambda i: (b"n", json.dumps({"stream": "n", "ts": T0, "values": {"temp": 1.0}}).encode()),
         "named_channels_unsupported"),
        (lambda i: (b"f", b'{"stream": "f", "ts": 1700000000000, "values": [NaN]}'), "non_finite"),
        (lambda i: (b"g", b'{"stream": "g", "ts": 1700000000000, "values": [1e39]}'), "non_finite"),
        (lambda i: (b"r", json.dumps({"stream": "r", "ts": [T0 + 5, T0 + 3], "values": [[1.0], [2.0]]}).encode()),
         "unordered_chunk"),
        (lambda i: (b"p", json.dumps({"stream": "p", "ts": 5, "values": [1.0]}).encode()), "ts_too_old"),
        (lambda i: (b"q", json.dumps({"stream": "q", "ts": future, "values": [1.0]}).encode()), "ts_in_future"),
        (lambda i: (b"k", json.dumps({"stream": "other", "ts": T0, "values": [1.0]}).encode()), "key_mismatch"),
        # Stream "dup" has one valid reading at T0: the same timestamp again, and an older one, are refused.
        (lambda i: (b"dup", json.dumps({"stream": "dup", "ts": T0, "values": [0.5]}).encode()), "duplicate_ts"),
        (lambda i: (b"dup", json.dumps({"stream": "dup", "ts": T0 - 1000, "values": [0.5]}).encode()),
         "out_of_order"),
    ]
    return [(make(i), reason) for i in range(n) for make, reason in [kinds[i % len(kinds)]]]


def test_dead_letter_flood_never_stops_the_daemon(kafka_bootstrap, new_topic):
    streams, per_stream, n_bad = 20, 60, 10_000
    valid = [(b"dup", json.dumps({"stream": "dup", "ts": T0, "values": [0.5]}).encode())]
    valid += _valid_readings(streams, per_stream)
    bad = _bad_records(n_bad)
    # Mix: the first reading of every stream first (so duplicates and late ones have something to follow),
    # then the rest of the valid readings interleaved with the bad ones.
    first, rest = valid[:streams + 1], valid[streams + 1:]
    mixed: list[tuple] = list(first)
    stride = n_bad // len(rest) + 1
    for i, rec in enumerate(rest):
        mixed.append(rec)
        mixed.extend(b[0] for b in bad[i * stride:(i + 1) * stride])
    mixed.extend(b[0] for b in bad[len(rest) * stride:])
    assert len(mixed) == len(valid) + n_bad
    knobs = {"STREAMER_KAFKA__MAX_RECORD_BYTES": "2048", "STREAMER_ENGINE__MIN_TS_MS": str(T0 - 86_400_000),
             "STREAMER_ENGINE__MAX_BATCH_READINGS": "500"}

    src = new_topic("mixed", partitions=2)
    send_records(kafka_bootstrap, src, mixed)
    out, dead = new_topic("out"), new_topic("dead")
    got = serve_until(serve_env(kafka_bootstrap, src, out, dead, **knobs), kafka_bootstrap, [out, dead],
                       len(valid) + n_bad)
    assert len(got[out]) == len(valid) and len(got[dead]) == n_bad

    want_reasons: dict[str, int] = {}
    for _, reason in bad:
        want_reasons[reason] = want_reasons.get(reason, 0) + 1
    got_reasons: dict[str, int] = {}
    for d in got[dead]:
        got_reasons[d["reason"]] = got_reasons.get(d["reason"], 0) + 1
        assert d["topic"] == src and d["offset"] >= 0 and d["detail"]
    assert got_reasons == want_reasons
    assert len(want_reasons) >= 12
    originals = {dead_letter_original(d) for d in got[dead] if d["reason"] == "invalid_json"}
    assert b'{"stream": "j", "ts": 1,' in originals and b"\xff\xfe\x00garbage" in originals

    clean = new_topic("clean", partitions=2)
    send_records(kafka_bootstrap, clean, valid)
    ref_out = new_topic("ref-out")
    reference = serve_until(serve_env(kafka_bootstrap, clean, ref_out, new_topic("ref-dead"), **knobs),
                             kafka_bootstrap, [ref_out], len(valid))[ref_out]
    assert_same_forecasts(got[out], reference)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_cardinality_flood_keeps_memory_flat(kafka_bootstrap, new_topic):
    n_ids, capacity = 1_000_000, 10_000
    src = new_topic("flood", partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50, batch_size=512 * 1024)
    for i in range(n_ids):
        sid = f"id{i:07d}"
        producer.send(src, key=sid.encode(), value=b'{"stream":"%s","ts":%d,"values":[%d.5]}' % (
            sid.encode(), T0 + i, i % 7))
    producer.close()
    port = free_port_pair()
    env = serve_env(kafka_bootstrap, src, new_topic("out"), new_topic("dead"),
                    STREAMER_ENGINE__CAPACITY=str(capacity), STREAMER_ENGINE__MAX_BATCH_READINGS="5000",
                    STREAMER_OUTPUT__FORECAST_EVERY="1000", STREAMER_OUTPUT__ANOMALIES="false",
                    STREAMER_METRICS__PORT=str(port),
                    STREAMER_KAFKA__COMMIT_INTERVAL_MS="1000")
    proc = start_serve(env)
    tail = LogTail(proc)
    rss: list[tuple[float, float]] = []  # (readings consumed, resident bytes)
    try:
        deadline = time.monotonic() + 900
        done = 0.0
        while done < n_ids and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(tail.text)[-3000:]
            time.sleep(2)
            try:
                m = _scrape(port)
            except OSError:
                continue
            done = m["streamer_readings_consumed_total"]
            rss.append((done, m["process_resident_memory_bytes"]))
        assert done == n_ids, f"{done} of {n_ids} readings in time"
        assert m["streamer_evictions_total"] >= n_ids - capacity
        assert m["streamer_active_streams"] <= capacity
    finally:
        proc.send_signal(signal.SIGTERM)
        tail.finish(timeout=120)
    # Flat: once the store is full (after the first 10% of ids), resident memory grows by less than 64 MiB.
    warm = [r for n, r in rss if n >= n_ids * 0.1]
    assert len(warm) >= 3, rss
    growth = max(warm) - warm[0]
    print(f"\nRSS at 10% of ids {warm[0] / 2**20:.0f} MiB, max after {max(warm) / 2**20:.0f} MiB, "
          f"growth {growth / 2**20:.1f} MiB over {len(warm)} samples")
    assert growth < 64 * 2**20, [(n, r / 2**20) for n, r in rss]


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test alone (it gets restarted), with its data kept across the restart."""
    broker = LocalKafka(tmp_path)
    proc = broker.run("up")
    if proc.returncode != 0:
        pytest.fail(f"kafka.sh up failed:\n{proc.stderr[-3000:]}", pytrace=False)
    yield broker
    broker.down()


def test_broker_restart_mid_stream_loses_and_duplicates_nothing(own_broker):
    bootstrap = own_broker.bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    names = {n: f"{n}-restart" for n in ("src", "out", "dead", "ref", "ref-dead")}
    admin.create_topics({names["src"]: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True)
    admin.close()
    streams, per_stream = 8, 250
    valid = _valid_readings(streams, per_stream, seed=3)
    half = len(valid) // 2
    send_records(bootstrap, names["src"], valid[:half])
    knobs = {"STREAMER_ENGINE__MAX_BATCH_READINGS": "50", "STREAMER_KAFKA__TRANSACTION_TIMEOUT_MS": "10000"}
    env = serve_env(bootstrap, names["src"], names["out"], names["dead"], **knobs)
    proc = start_serve(env)
    tail = LogTail(proc)
    try:
        first = collect(bootstrap, [names["out"]], half, timeout=120, proc=proc)[names["out"]]
        assert len(first) == half, "".join(tail.text)[-3000:]
        first_pid = own_broker.pid()
        own_broker.stop()
        assert first_pid is not None and own_broker.pid() is None
        time.sleep(5)  # the daemon sees the outage: failed fetches, maybe a failed commit
        own_broker.start()  # the same broker on its kept data
        assert own_broker.pid() not in (None, first_pid)
        send_records(bootstrap, names["src"], valid[half:])
        got = collect(bootstrap, [names["out"]], len(valid), timeout=180, proc=proc)[names["out"]]
        assert proc.poll() is None, "".join(tail.text)[-3000:]
        got = collect_all(bootstrap, [names["out"]])[names["out"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        tail.finish(timeout=90)
    assert len(got) == len(valid), "".join(tail.text)[-6000:]
    pairs = [(o["stream"], o["n"]) for o in got]
    assert len(set(pairs)) == len(pairs), "duplicates in read_committed output"
    reference = serve_until(serve_env(bootstrap, names["src"], names["ref"], names["ref-dead"], **knobs),
                             bootstrap, [names["ref"]], len(valid))[names["ref"]]
    assert_same_forecasts(got, reference)
