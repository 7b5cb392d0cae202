"""/metrics, /healthz and /readyz of a running service on the real broker."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
from kafka import KafkaProducer

from streamer.config import load_settings
from streamer.kafka.changelog import ChangelogRestorer
from streamer.service import Service
from tests.helpers import collect, http_get, serve_in_thread

# Every metric the issue names, as exported (histograms by their base name).
EXPECTED = [
    "streamer_readings_consumed_total", "streamer_outputs_produced_total", "streamer_dead_letters_total",
    "streamer_batch_readings", "streamer_step_duration_seconds", "streamer_record_to_output_latency_seconds",
    "streamer_active_streams", "streamer_evictions_total", "streamer_restored_records_total",
    "streamer_rebalances_total", "streamer_transaction_commit_duration_seconds", "streamer_commit_failures_total",
    "streamer_consumer_lag_records", "streamer_model_info", "streamer_ready", "streamer_out_of_order_readings_total",
]


def _samples(text: str) -> dict[str, float]:
    """name{labels} -> value of every sample in a Prometheus exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_health_and_readiness_during_restore(kafka_bootstrap, new_topic, monkeypatch):
    src, out, dead = new_topic("readings", partitions=2), new_topic("forecasts"), new_topic("dead")
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "forecast_topic": out,
               "dead_letter_topic": dead, "group_id": f"g-{run}", "transactional_id": f"tx-{run}"},
        model={"checkpoint": "random", "family": "lstm", "n_features": 2, "hidden": 8},
        engine={"device": "cpu", "max_wait_ms": 50, "capacity": 4, "max_batch_readings": 4},
        metrics={"port": 0},
    )
    seen_during_restore = []
    real_step = ChangelogRestorer.step

    def observed_step(restorer, *args, **kwargs):
        seen_during_restore.append(http_get(service.http.port, "/readyz")[0])
        return real_step(restorer, *args, **kwargs)

    monkeypatch.setattr(ChangelogRestorer, "step", observed_step)
    service = Service(settings)
    thread = serve_in_thread(service)
    try:
        port = service.http.port
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/nothing")[0] == 404

        rng = np.random.default_rng(0)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for t in range(5):
            for s in range(10):  # 10 streams through a store of 4: evictions
                body = {"stream": f"s{s}", "ts": 1000 + t, "values": rng.normal(size=2).tolist()}
                producer.send(src, key=f"s{s}".encode(), value=json.dumps(body).encode())
        producer.send(src, key=b"s0", value=json.dumps({"stream": "s0", "ts": 1004, "values": [1, 2]}).encode())
        producer.send(src, key=b"bad", value=b"{not json")
        producer.close()
        got = collect(kafka_bootstrap, [out, dead], 52)
        assert len(got[out]) == 50 and len(got[dead]) == 2

        deadline = time.monotonic() + 10
        while http_get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen_during_restore and set(seen_during_restore) == {503}, "not ready while restoring"
        assert http_get(port, "/readyz")[0] == 200, "ready once restored"

        status, text = http_get(port, "/metrics")
        assert status == 200
        names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        assert not [n for n in EXPECTED if n not in names], names
        assert "process_resident_memory_bytes" in names
        assert not any("stream=" in line for line in text.splitlines()), "no stream id labels"
        time.sleep(2.5)  # the lag gauge is refreshed every 2 s
        v = _samples(http_get(port, "/metrics")[1])
        assert v["streamer_readings_consumed_total"] == 50
        assert v['streamer_outputs_produced_total{kind="forecast"}'] == 50
        assert v['streamer_dead_letters_total{reason="invalid_json"}'] == 1
        assert v['streamer_dead_letters_total{reason="duplicate_ts"}'] == 1
        assert v['streamer_out_of_order_readings_total{kind="duplicate"}'] == 1
        assert v["streamer_evictions_total"] > 0 and v["streamer_active_streams"] <= 4
        assert v["streamer_ready"] == 1
        # the installed kafka-python is the one the fast paths were written for: all three in use
        assert [v[f'streamer_kafka_fast_path{{path="{p}"}}'] for p in ("decode", "append", "offsets")] == [1, 1, 1]
        assert v['streamer_rebalances_total{event="assigned"}'] >= 1
        assert v["streamer_batch_readings_count"] >= 1 and v["streamer_step_duration_seconds_count"] >= 1
        assert v["streamer_transaction_commit_duration_seconds_count"] >= 1
        assert v["streamer_record_to_output_latency_seconds_count"] >= 1
        assert v['streamer_model_info{family="lstm",name="lstm-h8-seed0",version="seed0"}'] == 1
        lags = {k: x for k, x in v.items() if k.startswith("streamer_consumer_lag_records{")}
        assert len(lags) == 2 and all(x == 0 for x in lags.values()), lags
    finally:
        service.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
