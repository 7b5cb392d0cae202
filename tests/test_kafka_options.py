"""Kafka settings a real cluster needs: any other client option, the offset reset policy, static membership, and
the partition count and replication of the topics the daemon creates."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kafka.errors import InvalidReplicationFactorError

from streamer.config import load_settings
from streamer.errors import ConfigError
from streamer.kafka.admin import ensure_topics, partition_count
from streamer.kafka.clients import admin_config, consumer_config, producer_config
from streamer.service import Service


def test_client_options_reach_the_consumer_producer_and_admin_arguments(monkeypatch):
    monkeypatch.setenv("STREAMER_KAFKA__CONSUMER_OPTIONS",
                       '{"fetch_max_bytes": 1000000, "max_poll_interval_ms": 600000}')
    monkeypatch.setenv("STREAMER_KAFKA__PRODUCER_OPTIONS", '{"compression_type": "gzip", "linger_ms": 5}')
    monkeypatch.setenv("STREAMER_KAFKA__ADMIN_OPTIONS", '{"request_timeout_ms": 60000}')
    kafka = load_settings().kafka
    consumer = consumer_config(kafka)
    assert consumer["fetch_max_bytes"] == 1_000_000 and consumer["max_poll_interval_ms"] == 600_000
    assert consumer["isolation_level"] == "read_committed" and consumer["enable_auto_commit"] is False
    producer = producer_config(kafka, "tx-1")
    assert producer["compression_type"] == "gzip" and producer["linger_ms"] == 5  # an option overrides a default
    assert producer["transactional_id"] == "tx-1" and producer["acks"] == "all"
    assert admin_config(kafka)["request_timeout_ms"] == 60_000
    monkeypatch.delenv("STREAMER_KAFKA__PRODUCER_OPTIONS")
    assert producer_config(load_settings().kafka, None)["linger_ms"] == 1000


@pytest.mark.parametrize("setting, options, message", [
    ("consumer_options", {"fetch_max_byte": 1}, "'fetch_max_byte' is no KafkaConsumer option; did you mean "
                                                "'fetch_max_bytes'"),
    ("producer_options", {"compresion_type": "lz4"}, "'compresion_type' is no KafkaProducer option"),
    ("admin_options", {"linger_ms": 5}, "'linger_ms' is no KafkaAdminClient option"),
    ("consumer_options", {"group_id": "other"}, "'group_id' is set by STREAMER_KAFKA__GROUP_ID"),
    ("consumer_options", {"isolation_level": "read_uncommitted"}, "'isolation_level' is set by the daemon"),
    ("producer_options", {"acks": 1}, "'acks' is set by the daemon"),
    ("admin_options", {"bootstrap_servers": "x:1"}, "'bootstrap_servers' is set by STREAMER_KAFKA__BOOTSTRAP"),
])
def test_an_unknown_or_reserved_option_fails_at_start_up_naming_the_setting_and_key(setting, options, message):
    settings = load_settings(kafka={setting: options}, engine={"device": "cpu"}, metrics={"enabled": False})
    name = f"STREAMER_KAFKA__{setting.upper()}"
    with pytest.raises(ConfigError, match=f"{name}: {message}"):
        Service(settings)  # before any broker round trip


def test_options_must_be_a_json_object(monkeypatch):
    monkeypatch.setenv("STREAMER_KAFKA__PRODUCER_OPTIONS", "compression_type=lz4")
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__PRODUCER_OPTIONS: not JSON"):
        load_settings()
    monkeypatch.setenv("STREAMER_KAFKA__PRODUCER_OPTIONS", '["compression_type"]')
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__PRODUCER_OPTIONS: give a JSON object"):
        load_settings()


def test_secret_looking_options_are_masked():
    settings = load_settings(kafka={"consumer_options": {"sasl_plain_password": "s3cret", "fetch_max_bytes": 5}})
    masked = settings.masked()["kafka"]["consumer_options"]
    assert masked == {"sasl_plain_password": "**********", "fetch_max_bytes": 5}


def test_offset_reset_and_static_membership_reach_the_consumer():
    default = consumer_config(load_settings().kafka)
    assert default["auto_offset_reset"] == "earliest" and "group_instance_id" not in default
    tuned = consumer_config(load_settings(kafka={"auto_offset_reset": "latest", "instance_id": "streamer-0"}).kafka)
    assert tuned["auto_offset_reset"] == "latest" and tuned["group_instance_id"] == "streamer-0"
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__AUTO_OFFSET_RESET"):
        load_settings(kafka={"auto_offset_reset": "none"})


def test_topic_layout_settings_are_checked():
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__REPLICATION_FACTOR: must be -1"):
        load_settings(kafka={"replication_factor": 0})
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__OUTPUT_PARTITIONS"):
        load_settings(kafka={"output_partitions": 0})


def _serve_until_ready(settings) -> None:
    service = Service(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not service.ready.is_set() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    service.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_created_topics_get_the_input_partition_count_or_the_setting(kafka_bootstrap, new_topic):
    src = new_topic("readings", partitions=3)
    run = uuid.uuid4().hex[:8]
    names = {f"{kind}_topic": f"{kind}-{run}" for kind in ("forecast", "alert", "event", "dead_letter")}

    def settings(group: str, **kafka):
        return load_settings(
            kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "group_id": group,
                   "transactional_id": f"tx-{group}", **kafka},
            engine={"device": "cpu", "max_wait_ms": 20}, metrics={"enabled": False}, model={"checkpoint": "random"})

    _serve_until_ready(settings(f"g-{run}", **names))
    k = settings(f"g-{run}").kafka
    assert {name: partition_count(k, name) for name in names.values()} == dict.fromkeys(names.values(), 3)
    assert partition_count(k, f"g-{run}-state-changelog") == 3

    other = {key: f"{name}-b" for key, name in names.items()}
    _serve_until_ready(settings(f"h-{run}", output_partitions=2, replication_factor=1, **other))
    assert {name: partition_count(k, name) for name in other.values()} == dict.fromkeys(other.values(), 2)
    assert partition_count(k, f"h-{run}-state-changelog") == 3  # the changelog stays co-partitioned with the input
    with pytest.raises(InvalidReplicationFactorError):  # the factor reaches the broker, which has one node only
        ensure_topics(settings("x", replication_factor=2).kafka, {f"r2-{run}": {}})
