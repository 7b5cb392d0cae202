"""deploy/local-kafka/kafka.sh: up is idempotent, a client exchanges a message, down leaves no process."""

from __future__ import annotations

import os
import subprocess

from kafka import KafkaConsumer, KafkaProducer

from lab.local_kafka import KAFKA_SH, free_port_pair


def test_up_exchange_down(kafka_bootstrap, tmp_path):
    # Needs the jars the session broker fetched; runs a second broker of its own on other ports.
    port = free_port_pair()
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_DATA_DIR=str(tmp_path / "kafka"))
    up = subprocess.run(["bash", str(KAFKA_SH), "up"], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip()
    assert bootstrap == f"127.0.0.1:{port}"
    pid = int((tmp_path / "kafka" / "broker.pid").read_text())
    try:
        again = subprocess.run(["bash", str(KAFKA_SH), "up"], env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode == 0 and again.stdout.strip() == bootstrap
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("hello", b"world").get(timeout=30)
        producer.close()
        consumer = KafkaConsumer("hello", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 consumer_timeout_ms=10000)
        assert [m.value for m in consumer][:1] == [b"world"]
        consumer.close()
    finally:
        down = subprocess.run(["bash", str(KAFKA_SH), "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0
    assert not _alive(pid), "the broker process outlived kafka.sh down"


def _alive(pid: int) -> bool:
    """True when the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
