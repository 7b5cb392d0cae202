"""Kafka clients of the daemon: consumer, producer, topic admin, and the one place where a commit is ordered.

Only this module (and the service that drives it) talks to Kafka; models, engine and detectors never do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from streamer.config import KafkaSettings

log = logging.getLogger(__name__)


class OutRecord(NamedTuple):
    """One record to publish: topic, key (stream id), the encoded value, and the partition when known."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (murmur2), computed once per stream."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def common_config(kafka: KafkaSettings) -> dict:
    """Client settings shared by consumer, producer and admin, security included."""
    cfg: dict = {"bootstrap_servers": kafka.bootstrap_servers.split(","), "client_id": kafka.client_id,
                 "security_protocol": kafka.security_protocol}
    if kafka.security_protocol.startswith("SASL"):
        cfg.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                   sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    if kafka.security_protocol.endswith("SSL"):
        cfg.update({k: v for k, v in {"ssl_cafile": kafka.ssl_cafile, "ssl_certfile": kafka.ssl_certfile,
                                      "ssl_keyfile": kafka.ssl_keyfile}.items() if v})
        if kafka.ssl_password is not None:
            cfg["ssl_password"] = kafka.ssl_password.get_secret_value()
    return cfg


def make_consumer(kafka: KafkaSettings) -> KafkaConsumer:
    """A group consumer that reads committed data only and never commits on its own."""
    static = {"group_instance_id": kafka.instance_id} if kafka.instance_id else {}
    return KafkaConsumer(
        **common_config(kafka),
        **static,
        group_id=kafka.group_id,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(1000, kafka.session_timeout_ms // 5),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(kafka.max_record_bytes, 1_048_576),
    )


def make_producer(kafka: KafkaSettings, transactional_id: str | None) -> KafkaProducer:
    """An idempotent producer; transactional when a transactional id is given."""
    extra = ({"transactional_id": transactional_id, "transaction_timeout_ms": kafka.transaction_timeout_ms}
             if transactional_id else {})
    return KafkaProducer(
        **common_config(kafka),
        acks="all",
        enable_idempotence=True,
        # Every send is followed by a flush or a transaction commit (Committer), so nothing waits on the linger:
        # the sender thread stays idle while the loop appends, instead of fighting it for the batch locks.
        linger_ms=1000,
        batch_size=1024 * 1024,
        max_request_size=max(kafka.max_record_bytes, 1_048_576) * 2,
        **extra,
    )


def ensure_topics(kafka: KafkaSettings, topics: dict[str, dict]) -> list[str]:
    """Create the topics that do not exist yet ({name: {num_partitions, configs}}); return those created."""
    admin = KafkaAdminClient(**common_config(kafka))
    try:
        existing = set(admin.list_topics())
        missing = {
            name: {"num_partitions": spec.get("num_partitions", 1), "replication_factor": -1,
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


def admin_topics(kafka: KafkaSettings) -> list[str]:
    """Names of the topics that exist on the cluster."""
    admin = KafkaAdminClient(**common_config(kafka))
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def partition_count(kafka: KafkaSettings, topic: str) -> int:
    """Number of partitions of an existing topic."""
    admin = KafkaAdminClient(**common_config(kafka))
    try:
        (desc,) = admin.describe_topics([topic])
        return len(desc["partitions"])
    finally:
        admin.close()


def next_offsets(records: Iterable) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets to commit after processing `records`: one past the last record of each partition."""
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if r.offset + 1 > offsets.get(tp, -1):
            offsets[tp] = r.offset + 1
    return {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}


class Committer:
    """Publishes outputs and commits consumer offsets; with exactly-once both go into one transaction.

    The commit order lives here and nowhere else:
      exactly-once:  begin -> send outputs -> send offsets to the transaction -> commit
      at-least-once: send outputs -> flush -> commit offsets on the consumer
    """

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer, exactly_once: bool) -> None:
        self.consumer = consumer
        self.producer = producer
        self.exactly_once = exactly_once
        if exactly_once:
            producer.init_transactions()

    def commit(self, records: list[OutRecord], offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Publish `records` and commit `offsets` atomically (exactly-once) or in that order (at-least-once)."""
        if not records and not offsets:
            return
        if self.exactly_once:
            self.producer.begin_transaction()
            try:
                for rec in records:
                    self.producer.send(rec.topic, key=rec.key, value=rec.value, partition=rec.partition)
                if offsets:
                    self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
                self.producer.commit_transaction()
            except Exception:
                self._abort_quietly()
                raise
        else:
            for rec in records:
                self.producer.send(rec.topic, key=rec.key, value=rec.value, partition=rec.partition)
            self.producer.flush()
            if offsets:
                self.consumer.commit(offsets)

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort_transaction()
        except Exception as exc:  # the producer may be fenced or closed: the abort itself is best effort
            log.warning("abort_transaction failed: %s", exc)
