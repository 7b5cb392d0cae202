"""Shared fixtures: a real Kafka broker for the session, unique topics per test."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = ROOT / "deploy" / "local-kafka" / "kafka.sh"


def _free_port_pair() -> int:
    """A port p such that p and p+1 are both free on 127.0.0.1 (broker and controller listeners)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports on 127.0.0.1")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory):
    """Bootstrap address of a real broker: STREAMER_TEST_BOOTSTRAP, or one started for this session."""
    given = os.environ.get("STREAMER_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    port = _free_port_pair()
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_DATA_DIR=str(tmp_path_factory.mktemp("kafka")))
    started = time.monotonic()
    proc = subprocess.run(["bash", str(KAFKA_SH), "up"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        message = f"the local Kafka broker could not start:\n{proc.stderr[-4000:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)  # in CI a missing broker is a failure, never a skip
        pytest.skip(message)
    print(f"\nKafka broker on {proc.stdout.strip()} started in {time.monotonic() - started:.1f}s")
    try:
        yield proc.stdout.strip()
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "down"], env=env, capture_output=True, text=True)


@pytest.fixture
def new_topic(kafka_bootstrap: str):
    """Factory creating a uniquely named topic on the test broker: new_topic(partitions=1, configs={})."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, configs: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}},
            wait_for_metadata=True,
        )
        created.append(name)
        return name

    yield make
    admin.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not slow down badly when the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the broker carries the `kafka` marker, so `-m kafka` selects exactly those."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
