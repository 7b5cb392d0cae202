"""End to end on the real broker: readings in, one output per reading out, hidden state carried across polls."""

from __future__ import annotations

import json
import signal
import sys
import threading
import uuid

import numpy as np
import torch
from kafka import KafkaProducer

from streamer.config import load_settings
from streamer.schema import dead_letter_original
from streamer.service import Service
from tests.helpers import collect, per_reading, serve_env, start_serve


def _settings(bootstrap, src, out, dead, **engine):
    run = uuid.uuid4().hex[:8]
    return load_settings(
        kafka={"bootstrap_servers": bootstrap, "input_topics": [src], "forecast_topic": out,
               "dead_letter_topic": dead, "group_id": f"g-{run}", "transactional_id": f"tx-{run}"},
        model={"checkpoint": "random", "family": "gru", "n_features": 2, "hidden": 16, "seed": 7},
        engine={"device": "cpu", "max_wait_ms": 50, **engine},
        output={"forecast_records": "input"},  # this test checks that outputs mirror the input records
        metrics={"port": 0},
    )


def test_state_is_carried_across_polls_and_equals_one_pass(kafka_bootstrap, new_topic):
    src, out, dead = new_topic("readings", partitions=2), new_topic("outputs"), new_topic("dead")
    settings = _settings(kafka_bootstrap, src, out, dead, switch_interval_ms=2.5)
    service = Service(settings)
    switch_interval = sys.getswitchinterval()
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()

    rng = np.random.default_rng(0)
    streams = {f"sensor-{i}": rng.normal(size=(12, 2)).astype(np.float32) for i in range(3)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)

    def send(rows: slice) -> None:
        for name, values in streams.items():
            for t in range(*rows.indices(len(values))):
                body = {"stream": name, "ts": 1000 * t, "values": values[t].tolist()}
                producer.send(src, key=name.encode(), value=json.dumps(body).encode())
        producer.flush()

    send(slice(0, 5))
    first = collect(kafka_bootstrap, [out], 15)[out]
    assert len(first) == 15
    assert sys.getswitchinterval() == 0.0025  # the setting, while serving
    # Second round: a chunk record for one stream, single readings for the others, and one bad record.
    producer.send(src, key=b"sensor-0", value=json.dumps(
        {"stream": "sensor-0", "ts": [5000, 6000, 7000], "values": streams["sensor-0"][5:8].tolist()}).encode())
    producer.send(src, key=b"sensor-1", value=b'{"stream": "sensor-1", "ts": 9, "values": [1.0]}')
    streams_tail = {k: v for k, v in streams.items() if k != "sensor-0"}
    for name, values in streams_tail.items():
        for t in range(5, 12):
            producer.send(src, key=name.encode(), value=json.dumps(
                {"stream": name, "ts": 1000 * t, "values": values[t].tolist()}).encode())
    for t in range(8, 12):
        producer.send(src, key=b"sensor-0", value=json.dumps(
            {"stream": "sensor-0", "ts": 1000 * t, "values": streams["sensor-0"][t].tolist()}).encode())
    producer.close()

    got = collect(kafka_bootstrap, [out, dead], 35, expand=False)
    service.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert sys.getswitchinterval() == switch_interval  # given back when the service stops
    outputs, dead_letters = per_reading(got[out]), got[dead]
    # The chunk record of three readings yields one forecast record with a list per field.
    assert len(got[out]) == 34 and len(outputs) == 36 and service.stats.commits >= 2
    chunked = [o for o in got[out] if isinstance(o["ts"], list)]
    assert [(o["stream"], o["ts"], o["n"]) for o in chunked] == [("sensor-0", [5000, 6000, 7000], [6, 7, 8])]
    assert [d["reason"] for d in dead_letters] == ["wrong_shape"]
    assert dead_letter_original(dead_letters[0]) == b'{"stream": "sensor-1", "ts": 9, "values": [1.0]}'

    model = service.served.model
    for name, values in streams.items():
        mine = [o for o in outputs if o["stream"] == name]
        assert [o["n"] for o in mine] == list(range(1, 13))
        assert [o["ts"] for o in mine] == [1000 * t for t in range(12)]
        with torch.inference_mode():
            one_pass, _ = model(torch.from_numpy(values)[None], torch.tensor([12]), None)
        expected = one_pass["reconstruction"][0].numpy()
        np.testing.assert_allclose(np.array([o["forecast"][0] for o in mine]), expected, atol=1e-5)


def test_serve_stops_cleanly_on_sigterm(kafka_bootstrap, new_topic):
    src, out, dead = new_topic("readings"), new_topic("outputs"), new_topic("dead")
    proc = start_serve(serve_env(kafka_bootstrap, src, out, dead))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for t in range(20):
        producer.send(src, key=b"s", value=json.dumps({"stream": "s", "ts": t, "values": [float(t)]}).encode())
    producer.close()
    outputs = collect(kafka_bootstrap, [out], 20, proc=proc)[out]
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert [o["n"] for o in outputs] == list(range(1, 21))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "stopped" and entry["readings"] == 20 for entry in logs)
