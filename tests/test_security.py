"""SASL (PLAIN and SCRAM) against a real broker with a SASL_PLAINTEXT listener: the daemon's clients log in."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from lab.local_kafka import LocalKafka
from streamer.config import load_settings
from streamer.service import Service
from tests.helpers import collect

PASSWORD = "pa55-" + uuid.uuid4().hex[:8]
pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    broker = LocalKafka(tmp_path_factory.mktemp("sasl"), sasl_password=PASSWORD)
    proc = broker.run("up")
    if proc.returncode != 0:
        pytest.fail(f"kafka.sh up (SASL) failed:\n{proc.stderr[-3000:]}", pytrace=False)
    yield broker
    broker.down()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_serve_over_sasl_exactly_once(sasl_broker, mechanism):
    run = uuid.uuid4().hex[:8]
    src = f"sasl-in-{run}"
    admin = KafkaAdminClient(bootstrap_servers=sasl_broker.bootstrap)  # the plain listener, for set-up only
    admin.create_topics({src: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True)
    admin.close()
    settings = load_settings(
        kafka={"bootstrap_servers": sasl_broker.sasl_bootstrap, "input_topics": [src],
               "forecast_topic": f"sasl-fc-{run}", "dead_letter_topic": f"sasl-dead-{run}",
               "alert_topic": f"sasl-al-{run}", "event_topic": f"sasl-ev-{run}",
               "group_id": f"g-{run}", "transactional_id": f"tx-{run}", "security_protocol": "SASL_PLAINTEXT",
               "sasl_mechanism": mechanism, "sasl_username": "streamer", "sasl_password": PASSWORD},
        engine={"device": "cpu", "max_wait_ms": 50}, metrics={"port": 0}, output={"anomalies": False},
        model={"checkpoint": "random"})
    service = Service(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        producer = KafkaProducer(bootstrap_servers=sasl_broker.bootstrap)
        for t in range(5):
            producer.send(src, key=b"s", value=json.dumps({"stream": "s", "ts": t + 1, "values": [t]}).encode())
        producer.close()
        got = collect(sasl_broker.bootstrap, [f"sasl-fc-{run}"], 5, timeout=60)[f"sasl-fc-{run}"]
    finally:
        service.stop()
        thread.join(timeout=30)
    assert [o["n"] for o in got] == [1, 2, 3, 4, 5]


def test_a_wrong_password_is_refused(sasl_broker):
    with pytest.raises(KafkaError):
        KafkaAdminClient(bootstrap_servers=sasl_broker.sasl_bootstrap, security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="streamer",
                         sasl_plain_password="wrong", request_timeout_ms=5000, api_version_auto_timeout_ms=5000)
