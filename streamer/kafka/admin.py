"""Topic administration: create the daemon's topics, read their configs and partition counts."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from streamer.config import KafkaSettings
from streamer.kafka.clients import admin_config

log = logging.getLogger(__name__)


def ensure_topics(kafka: KafkaSettings, topics: dict[str, dict]) -> list[str]:
    """Create the topics that do not exist yet ({name: {num_partitions, configs}}), replicated as
    STREAMER_KAFKA__REPLICATION_FACTOR says; return those created."""
    admin = KafkaAdminClient(**admin_config(kafka))
    try:
        existing = set(admin.list_topics())
        missing = {
            name: {"num_partitions": spec.get("num_partitions", 1), "replication_factor": kafka.replication_factor,
                   "configs": spec.get("configs", {})}
            for name, spec in topics.items() if name not in existing
        }
        if missing:
            try:
                admin.create_topics(missing, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # another instance created it between list and create
            log.info("created topics %s", sorted(missing))
        return sorted(missing)
    finally:
        admin.close()


def topic_configs(kafka: KafkaSettings, topic: str, keys: Iterable[str]) -> dict[str, str]:
    """The values in force (defaults included) of the named configs of an existing topic."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(**admin_config(kafka))
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=dict.fromkeys(keys))],
                                       config_filter="all")
        return {key: entry["value"] for key, entry in found["topic"][topic].items()}
    finally:
        admin.close()


def admin_topics(kafka: KafkaSettings) -> list[str]:
    """Names of the topics that exist on the cluster."""
    admin = KafkaAdminClient(**admin_config(kafka))
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def partition_count(kafka: KafkaSettings, topic: str) -> int:
    """Number of partitions of an existing topic."""
    admin = KafkaAdminClient(**admin_config(kafka))
    try:
        (desc,) = admin.describe_topics([topic])
        return len(desc["partitions"])
    finally:
        admin.close()
