"""`streamer demo`: real series through the real daemon on a real broker, outputs printed as they arrive."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from streamer.config import KafkaSettings, Settings, load_settings
from streamer.errors import KafkaUnavailable
from streamer.replay import load_series, replay
from streamer.schema import forecasts_of
from streamer.transport import ensure_topics, reachable

# Two malformed records show that bad input goes to the dead-letter topic instead of stopping the daemon.
BAD_RECORDS = [b'{"stream": "broken-sensor", "ts": 1, "values": [NaN]}', b"not json at all"]


def await_broker(kafka: KafkaSettings, timeout_s: float) -> str | None:
    """Wait up to `timeout_s` for a bootstrap server to accept connections: None once one does, else the error."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reachable(kafka, timeout_s=max(0.1, min(2.0, deadline - time.monotonic())))
            return None
        except KafkaUnavailable as exc:
            if time.monotonic() >= deadline:
                return str(exc)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def demo_settings(bootstrap: str) -> Settings:
    """The daemon's settings for one demo run: fresh topics, group and transactional id."""
    run = uuid.uuid4().hex[:8]
    return load_settings(kafka={
        "bootstrap_servers": bootstrap, "input_topics": [f"demo-readings-{run}"],
        "forecast_topic": f"demo-forecasts-{run}", "dead_letter_topic": f"demo-dead-letters-{run}",
        "group_id": f"demo-{run}", "transactional_id": f"demo-{run}",
    }, engine={"max_batch_readings": 500}, metrics={"port": 0})


def run_demo(bootstrap: str, files: list[Path], every: int = 1000, timeout_s: float = 300.0) -> int:
    """Replay `files` (one stream each) through a Service and print every `every`-th output; 0 on success."""
    settings = demo_settings(bootstrap)
    k = settings.kafka
    error = await_broker(k, timeout_s)
    if error is not None:
        print(f"demo: no Kafka broker at {bootstrap} answered within {timeout_s:g}s ({error}); start one with "
              "`make kafka-up`, or name one with --bootstrap", file=sys.stderr)
        return 1
    ensure_topics(k, {k.input_topics[0]: {"num_partitions": 2}, k.forecast_topic: {}, k.dead_letter_topic: {}})
    series = [load_series(p)[:3] for p in files]
    expected = sum(len(ts) for _, ts, _ in series)
    print(f"demo: broker {bootstrap}; replaying {expected} readings of {len(series)} NAB series "
          f"({', '.join(s for s, _, _ in series)}) into {k.input_topics[0]}")
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","))
    replay(producer, k.input_topics[0], series)
    for raw in BAD_RECORDS:
        producer.send(k.input_topics[0], key=b"broken-sensor", value=raw)
    producer.close()

    from streamer.service import Service  # torch: seconds to import, not spent when there is no broker

    service = Service(settings)
    thread = threading.Thread(target=service.run, name="streamer-serve", daemon=True)
    started = time.monotonic()
    thread.start()
    consumer = KafkaConsumer(k.forecast_topic, k.dead_letter_topic, bootstrap_servers=bootstrap.split(","),
                             isolation_level="read_committed", auto_offset_reset="earliest",
                             enable_auto_commit=False)
    outputs = dead = 0
    last: dict[str, dict] = {}
    try:
        while (outputs < expected or dead < len(BAD_RECORDS)) and time.monotonic() - started < timeout_s:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    msg = json.loads(r.value)
                    if tp.topic == k.dead_letter_topic:
                        dead += 1
                        print(f"dead letter  reason={msg['reason']:<14} detail={msg['detail']}")
                        continue
                    for one in forecasts_of(msg):  # a record holds the stream's forecasts of one batch
                        outputs += 1
                        last[one["stream"]] = one
                        if outputs % every == 0 or outputs == 1:
                            pred = ", ".join(f"{x:+.3f}" for x in one["forecast"][0])
                            print(f"output {outputs:>6}/{expected}  stream={one['stream']:<28} ts={one['ts']} "
                                  f"n={one['n']:<5} forecast=[{pred}]")
    finally:
        service.stop()
        thread.join(timeout=30)
        consumer.close()
    elapsed = time.monotonic() - started
    for name, msg in sorted(last.items()):
        print(f"stream {name}: {msg['n']} readings, state carried across {service.stats.commits} commits")
    print(f"demo: {outputs} outputs and {dead} dead letters in {elapsed:.1f}s "
          f"({outputs / max(elapsed, 1e-9):.0f} readings/s end to end, exactly-once)")
    return 0 if outputs == expected and dead == len(BAD_RECORDS) else 1
