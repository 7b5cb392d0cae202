"""Shared fixtures: a real Kafka broker for the session, unique topics per test."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from lab.local_kafka import LocalKafka


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory):
    """Bootstrap address of a real broker: STREAMER_TEST_BOOTSTRAP, or one started for this session."""
    given = os.environ.get("STREAMER_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    started = time.monotonic()
    proc = broker.run("up")
    if proc.returncode != 0:
        message = f"the local Kafka broker could not start:\n{proc.stderr[-4000:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)  # in CI a missing broker is a failure, never a skip
        pytest.skip(message)
    print(f"\nKafka broker on {proc.stdout.strip()} started in {time.monotonic() - started:.1f}s")
    try:
        yield proc.stdout.strip()
    finally:
        broker.down()


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
