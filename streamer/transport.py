"""Kafka clients of the daemon: consumer, producer, topic admin, and the one place where a commit is ordered.

Only this module (and the service that drives it) talks to Kafka; models, engine and detectors never do.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterable
from typing import NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from streamer import record_reader
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


def make_consumer(kafka: KafkaSettings, stock_decoding: bool = False) -> KafkaConsumer:
    """A group consumer that reads committed data only and never commits on its own; it decodes fetched records
    with record_reader unless `stock_decoding` (kafka-python's own, e.g. for a baseline) is asked for."""
    static = {"group_instance_id": kafka.instance_id} if kafka.instance_id else {}
    consumer = KafkaConsumer(
        **common_config(kafka),
        **static,
        group_id=kafka.group_id,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(1000, kafka.session_timeout_ms // 5),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(kafka.max_record_bytes, kafka.max_partition_fetch_bytes),
    )
    if not stock_decoding:
        record_reader.install(consumer)
    return consumer


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
        # A transaction's first request right after the previous commit is refused with CONCURRENT_TRANSACTIONS
        # until the broker has written the commit markers; kafka-python retries after retry_backoff_ms (100 by
        # default), which made send_offsets_to_transaction take 100-290 ms per commit on a local broker. The
        # Java client retries that error after 20 ms (KAFKA-5477); so does this producer, for all retries.
        retry_backoff_ms=20,
        **extra,
    )


class RecordAppender:
    """Queues many records on a producer: `KafkaProducer.send` less what holds for a whole commit at once.

    send() re-checks per record what a commit's records share (producer open, topic metadata known, the
    partition registered in the transaction) and builds a log line it then discards; appending to the
    record accumulator directly, as send() itself does, halves the CPU per record (33 -> 17 us measured on
    kafka-python 3.0.12), and the daemon publishes one to two records per stream per commit. Records
    without a partition, and producers whose internals differ from what this was written against, go
    through send().
    """

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer
        accumulator = getattr(producer, "_accumulator", None)
        internals = ("_sender", "_transaction_manager", "_estimate_size_in_bytes", "_ensure_valid_record_size")
        self.direct = (accumulator is not None and all(hasattr(producer, name) for name in internals)
                       and "abort_on_new_batch" in inspect.signature(accumulator.append).parameters)
        self._limit = producer.config["max_request_size"]

    def append(self, records: Iterable[OutRecord]) -> list:
        """Queue `records` in order; returns their futures (a failure also fails the transaction's commit)."""
        p = self.producer
        if not self.direct:
            return [p.send(r.topic, key=r.key, value=r.value, partition=r.partition) for r in records]
        accumulator, wakeup, txn = p._accumulator, p._sender.wakeup, p._transaction_manager
        transactional = txn is not None and txn.is_transactional()
        partitions: dict[str, set[int]] = {}
        registered: set[TopicPartition] = set()
        futures = []
        for r in records:
            known = partitions.get(r.topic)
            if known is None:
                known = partitions[r.topic] = p.partitions_for(r.topic)  # waits for metadata, once per topic
            if r.partition is None or r.partition not in known:  # send() partitions it, or says what is wrong
                futures.append(p.send(r.topic, key=r.key, value=r.value, partition=r.partition))
                continue
            if len(r.value or b"") + len(r.key or b"") + 256 > self._limit:  # an exact check near the limit
                p._ensure_valid_record_size(p._estimate_size_in_bytes(r.key, r.value, []))
            tp = TopicPartition(r.topic, r.partition)
            if transactional and tp not in registered:
                txn.maybe_add_partition_to_transaction(tp)
                registered.add(tp)
            future, full, new_batch, _ = accumulator.append(tp, None, r.key, r.value, [])
            if full or new_batch:
                wakeup()
            futures.append(future)
        return futures


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

    A commit runs on a worker thread (`start`) while the loop polls and processes the next batch, so the
    broker round trips of a transaction overlap with work instead of stalling it; `wait` joins it. One
    commit is in flight at most: `start` waits for the previous one first. The consumer (not thread
    safe) is only touched by the caller's thread: its group metadata is read in `start`, at-least-once
    offsets are committed in `wait`.
    """

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer, exactly_once: bool) -> None:
        self.consumer = consumer
        self.producer = producer
        self.exactly_once = exactly_once
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        self._appender = RecordAppender(producer)
        if exactly_once:
            producer.init_transactions()

    def commit(self, records: list[OutRecord], offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Publish `records` and commit `offsets` atomically (exactly-once) or in that order (at-least-once)."""
        self.start(records, offsets)
        self.wait()

    def start(self, records: list[OutRecord], offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Begin committing in the background, once the commit in flight (if any) is done; see `wait`."""
        self.wait()
        if not records and not offsets:
            return
        metadata = self.consumer.group_metadata() if self.exactly_once and offsets else None
        self._offsets = offsets
        self._worker = threading.Thread(target=self._publish, args=(records, offsets, metadata),
                                        name="streamer-commit", daemon=True)
        self._worker.start()

    def idle(self) -> bool:
        """No commit is running (one may be finished and not yet waited for)."""
        return self._worker is None or not self._worker.is_alive()

    def wait(self) -> bool:
        """Block until the commit in flight is done and raise its failure; True when there was one."""
        if self._worker is None:
            return False
        self._worker.join()
        self._worker = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        if not self.exactly_once and self._offsets:
            self.consumer.commit(self._offsets)
        return True

    def close(self) -> None:
        """Join the commit in flight, if any, without raising: the session is ending anyway."""
        if self._worker is not None:
            self._worker.join()
            self._worker = None
            if self._error is not None:
                log.warning("commit in flight failed at close: %r", self._error)
                self._error = None

    def _publish(self, records: list[OutRecord], offsets: dict[TopicPartition, OffsetAndMetadata],
                 metadata) -> None:
        try:
            if self.exactly_once:
                self.producer.begin_transaction()
            futures = self._appender.append(records)
            if self.exactly_once:
                if offsets:
                    self.producer.send_offsets_to_transaction(offsets, metadata)
                self.producer.commit_transaction()  # fails when any record failed
            else:
                self.producer.flush()
                for future in futures:  # flush() waits but does not raise: offsets only after every record
                    if future.failed():
                        raise future.exception
        except BaseException as exc:  # handed to the caller's thread by wait()
            if self.exactly_once:
                self._abort_quietly()
            self._error = exc

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort_transaction()
        except Exception as exc:  # the producer may be fenced or closed: the abort itself is best effort
            log.warning("abort_transaction failed: %s", exc)
