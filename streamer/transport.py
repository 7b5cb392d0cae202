"""Kafka clients of the daemon: consumer, producer, topic admin, and the one place where a commit is ordered.

Only this module (and the service that drives it) talks to Kafka; models, engine and detectors never do.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint
from kafka.structs import OffsetAndMetadata

from streamer import record_reader
from streamer.config import KafkaSettings
from streamer.errors import ConfigError, KafkaUnavailable
from streamer.schema import OutRecord  # the records the daemon publishes (defined with their wire formats)

if TYPE_CHECKING:  # kafka-python internals, named in annotations only: the code runs where they differ
    from kafka.producer.transaction_manager import TransactionalRequestResult
    from kafka.structs import ConsumerGroupMetadata

log = logging.getLogger(__name__)


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


def bootstrap_addresses(kafka: KafkaSettings) -> list[tuple[str, int]]:
    """(host, port) of every bootstrap server ("host:port", "[v6]:port"; Kafka's port 9092 when none is given)."""
    out = []
    for server in kafka.bootstrap_servers.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or "]" in port:  # no port ("broker" or "[::1]")
            host, port = server.strip(), "9092"
        out.append((host.strip("[]"), int(port)))
    return out


def reachable(kafka: KafkaSettings, timeout_s: float = 2.0) -> None:
    """Return once a bootstrap server accepts a TCP connection; raise KafkaUnavailable with every server's error.

    A cheap gate before a Kafka client is made: kafka-python's bootstrap retries an absent broker for 30 s,
    logging an error per try, where this answers at once (refused) or after `timeout_s` (unroutable).
    """
    addresses, errors = bootstrap_addresses(kafka), []
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}" if len(addresses) == 1 else f"{host}:{port}: {exc}")
    raise KafkaUnavailable("; ".join(errors))


_SECURITY = {key: "STREAMER_KAFKA__SECURITY_PROTOCOL and the SASL/SSL settings" for key in (
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile",
    "ssl_certfile", "ssl_keyfile", "ssl_password")}
_COMMON = {"bootstrap_servers": "STREAMER_KAFKA__BOOTSTRAP_SERVERS", "client_id": "STREAMER_KAFKA__CLIENT_ID",
           **_SECURITY}
# Keys an option must not set: a setting of its own covers them, or exactly-once and the record format rely on them.
RESERVED_OPTIONS: dict[str, dict[str, str]] = {
    "consumer": {**_COMMON, "group_id": "STREAMER_KAFKA__GROUP_ID", "group_instance_id": "STREAMER_KAFKA__INSTANCE_ID",
                 "session_timeout_ms": "STREAMER_KAFKA__SESSION_TIMEOUT_MS",
                 "auto_offset_reset": "STREAMER_KAFKA__AUTO_OFFSET_RESET",
                 "max_partition_fetch_bytes": "STREAMER_KAFKA__MAX_PARTITION_FETCH_BYTES",
                 "enable_auto_commit": "the daemon (offsets are committed with the outputs)",
                 "isolation_level": "the daemon (read_committed, for exactly-once)",
                 "key_deserializer": "the daemon (it decodes raw bytes)",
                 "value_deserializer": "the daemon (it decodes raw bytes)"},
    "producer": {**_COMMON, "transactional_id": "STREAMER_KAFKA__TRANSACTIONAL_ID",
                 "transaction_timeout_ms": "STREAMER_KAFKA__TRANSACTION_TIMEOUT_MS",
                 "enable_idempotence": "the daemon (exactly-once needs it)",
                 "acks": "the daemon (exactly-once needs all)",
                 "key_serializer": "the daemon (it sends raw bytes)",
                 "value_serializer": "the daemon (it sends raw bytes)"},
    "admin": dict(_COMMON),
}
_CLIENTS = {"consumer": KafkaConsumer, "producer": KafkaProducer, "admin": KafkaAdminClient}


def client_options(kafka: KafkaSettings, role: str) -> dict:
    """STREAMER_KAFKA__<ROLE>_OPTIONS, checked against the kafka-python client's own options (ConfigError)."""
    options = getattr(kafka, f"{role}_options")
    name = f"STREAMER_KAFKA__{role.upper()}_OPTIONS"
    known = sorted(_CLIENTS[role].DEFAULT_CONFIG)
    for key in options:
        if key in RESERVED_OPTIONS[role]:
            raise ConfigError(f"{name}: {key!r} is set by {RESERVED_OPTIONS[role][key]}, not by options")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see kafka-python's {_CLIENTS[role].__name__}"
            raise ConfigError(f"{name}: {key!r} is no {_CLIENTS[role].__name__} option; {hint}")
    return dict(options)


def check_client_options(kafka: KafkaSettings) -> None:
    """Fail (ConfigError naming the setting and the key) when an extra client option is unknown or reserved."""
    for role in _CLIENTS:
        client_options(kafka, role)


def consumer_config(kafka: KafkaSettings) -> dict:
    """The KafkaConsumer arguments: a group member that reads committed data only and never commits on its own."""
    static = {"group_instance_id": kafka.instance_id} if kafka.instance_id else {}
    return {
        **common_config(kafka),
        **static,
        "group_id": kafka.group_id,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(1000, kafka.session_timeout_ms // 5),
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "auto_offset_reset": kafka.auto_offset_reset,
        "max_partition_fetch_bytes": max(kafka.max_record_bytes, kafka.max_partition_fetch_bytes),
        **client_options(kafka, "consumer"),
    }


def make_consumer(kafka: KafkaSettings, stock_decoding: bool = False) -> KafkaConsumer:
    """A group consumer (consumer_config); it decodes fetched records with record_reader unless
    `stock_decoding` (kafka-python's own, e.g. for a baseline) is asked for."""
    consumer = KafkaConsumer(**consumer_config(kafka))
    if not stock_decoding:
        record_reader.install(consumer)
    return consumer


def producer_config(kafka: KafkaSettings, transactional_id: str | None) -> dict:
    """The KafkaProducer arguments: idempotent; transactional when a transactional id is given."""
    extra = ({"transactional_id": transactional_id, "transaction_timeout_ms": kafka.transaction_timeout_ms}
             if transactional_id else {})
    return {
        **common_config(kafka),
        "acks": "all",
        "enable_idempotence": True,
        # Every send is followed by a flush or a transaction commit (Committer), so nothing waits on the linger:
        # the sender thread stays idle while the loop appends, instead of fighting it for the batch locks. With
        # transactions that holds until the first commit only: kafka-python's sender begins a flush when a
        # transaction ends and never ends it (3.0.12, Sender._maybe_send_pending_request), so from then on
        # a batch goes out whenever the sender runs, which the 1 ms switch interval of the loop makes often.
        "linger_ms": 1000,
        "batch_size": 1024 * 1024,
        "max_request_size": max(kafka.max_record_bytes, 1_048_576) * 2,
        # A transaction's first request right after the previous commit is refused with CONCURRENT_TRANSACTIONS
        # until the broker has written the commit markers; kafka-python retries after retry_backoff_ms (100 by
        # default), which made send_offsets_to_transaction take 100-290 ms per commit on a local broker. The
        # Java client retries that error after 20 ms (KAFKA-5477); so does this producer, for all retries.
        "retry_backoff_ms": 20,
        **extra,
        **client_options(kafka, "producer"),
    }


def transactional_id(kafka: KafkaSettings) -> str:
    """Stable per instance, so a restarted instance fences and aborts its predecessor's open transaction."""
    return kafka.transactional_id or f"{kafka.group_id}-{kafka.instance_id or socket.gethostname()}"


def make_producer(kafka: KafkaSettings, transactional_id: str | None) -> KafkaProducer:
    """An idempotent producer (producer_config); transactional when a transactional id is given."""
    return KafkaProducer(**producer_config(kafka, transactional_id))


def admin_config(kafka: KafkaSettings) -> dict:
    """The KafkaAdminClient arguments."""
    return {**common_config(kafka), **client_options(kafka, "admin")}


def _varint_bytes(value: int) -> bytes:
    """Kafka's zigzag varint of `value`."""
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


_VARINTS = [_varint_bytes(v) for v in range(1 << 14)]  # lengths, offset and time deltas are mostly small


def _varint(value: int) -> bytes:
    return _VARINTS[value] if 0 <= value < 16384 else _varint_bytes(value)


def _near_limit(record: OutRecord, max_bytes: int) -> bool:
    """Whether a record's key and value come near `max_bytes`: then only the producer's exact size check decides."""
    return len(record.key or b"") + len(record.value or b"") + 256 > max_bytes


def append_to_batch(batch, records: list, order: list[int], k: int, timestamp_ms: int, now: float,
                    max_bytes: int) -> int:
    """Write records[order[k]], records[order[k + 1]], ... (one partition, no headers) into an open
    ProducerBatch, byte for byte as kafka-python's DefaultRecordBatchBuilder.append writes them; stops when
    the batch is full or at a record whose key and value come near `max_bytes`; returns how many it wrote.

    The caller holds the partition's accumulator lock, so the sender cannot close the batch meanwhile.
    """
    builder_of = batch.records
    builder = builder_of._builder
    buffer, limit = builder._buffer, builder._batch_size
    empty = builder._first_timestamp is None
    ts_delta = _varint(0 if empty else timestamp_ms - builder._first_timestamp)
    offset = first = builder_of._next_offset
    varint, largest = _varint, batch.max_record_size
    for m in range(k, len(order)):
        r = records[order[m]]
        if _near_limit(r, max_bytes):  # left to the caller's exact size check
            break
        key, value = r.key, r.value
        body = b"".join([b"\x00", ts_delta, varint(offset),  # the offset in the batch: produce has base 0
                         varint(len(key)) + key if key is not None else b"\x01",
                         varint(len(value)) + value if value is not None else b"\x01", b"\x00"])
        head = varint(len(body))
        required = len(body) + len(head)
        if required + len(buffer) > limit and not (empty and offset == first):  # full (a first record always fits)
            break
        buffer += head
        buffer += body
        offset += 1
        largest = max(largest, required)
    written = offset - first
    if written:
        if empty:
            builder._first_timestamp = builder._max_timestamp = timestamp_ms
        builder._num_records += written
        builder._last_offset = offset - 1
        builder_of._next_offset = offset
        if builder._max_timestamp < timestamp_ms:
            builder._max_timestamp = timestamp_ms
        batch.max_record_size = largest
        batch.last_append = now
    return written


class RecordAppender:
    """Queues many records on a producer: `KafkaProducer.send` less what holds for a whole commit at once.

    send() re-checks per record what a commit's records share (producer open, topic metadata known, the
    partition registered in the transaction), builds a log line it then discards, and goes through the
    accumulator, the batch and the batch builder one record at a time, with a future per record. Here the
    records of each partition are written straight into its open batch under the partition's lock
    (append_to_batch: byte for byte what the builder writes), and they share that batch's future: 2.7 us a
    record, against 33 through send() and 14-19 through the accumulator's append (20k records of one
    transaction, kafka-python 3.0.12). Records without a partition (through send(), in order among
    themselves), records near the size limit (the accumulator's own append, after send()'s exact size
    check), batches of the legacy message format and producers whose internals differ from those this was
    written against take the slower paths. Order is kept within every partition, which is all Kafka orders.
    """

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer
        accumulator = getattr(producer, "_accumulator", None)
        internals = ("_sender", "_transaction_manager", "_estimate_size_in_bytes", "_ensure_valid_record_size")
        self.direct = (accumulator is not None and all(hasattr(producer, name) for name in internals)
                       and all(hasattr(accumulator, name) for name in ("_tp_lock", "_batches", "_appends_in_progress"))
                       and "abort_on_new_batch" in inspect.signature(accumulator.append).parameters
                       and {"_buffer", "_batch_size", "_first_timestamp", "_max_timestamp", "_num_records",
                            "_last_offset"} <= set(DefaultRecordBatchBuilder.__slots__)
                       and {"_builder", "_next_offset", "_closed"} <= set(MemoryRecordsBuilder.__slots__))
        self._limit = producer.config["max_request_size"]

    def append(self, records: Iterable[OutRecord]) -> list:
        """Queue `records`; returns their futures, in order (a failure also fails the transaction's commit)."""
        p = self.producer
        if not self.direct:
            return [p.send(r.topic, key=r.key, value=r.value, partition=r.partition) for r in records]
        records = list(records)
        txn = p._transaction_manager
        transactional = txn is not None and txn.is_transactional()
        futures: list = [None] * len(records)
        partitions: dict[str, set[int]] = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for idx, r in enumerate(records):
            known = partitions.get(r.topic)
            if known is None:
                known = partitions[r.topic] = p.partitions_for(r.topic)  # waits for metadata, once per topic
            if r.partition is None or r.partition not in known:  # send() partitions it, or says what is wrong
                futures[idx] = p.send(r.topic, key=r.key, value=r.value, partition=r.partition)
                continue
            group = groups.get((r.topic, r.partition))
            if group is None:
                group = groups[r.topic, r.partition] = []
            group.append(idx)
        for (topic, partition), order in groups.items():
            tp = TopicPartition(topic, partition)
            if transactional:
                txn.maybe_add_partition_to_transaction(tp)
            self._append_partition(tp, records, order, futures)
        return futures

    def _append_partition(self, tp: TopicPartition, records: list, order: list[int], futures: list) -> None:
        """records[order[...]] (one partition) into its open batch, opening new ones through the accumulator."""
        p = self.producer
        accumulator = p._accumulator
        timestamp_ms, now = int(time.time() * 1000), time.monotonic()
        k = 0
        while k < len(order):
            accumulator._appends_in_progress.increment()
            try:
                with accumulator._tp_lock(tp):
                    dq = accumulator._batches[tp]
                    last = dq[-1] if dq else None
                    if (last is not None and not last.records._closed
                            and type(last.records._builder) is DefaultRecordBatchBuilder):  # open, format v2
                        written = append_to_batch(last, records, order, k, timestamp_ms, now, self._limit)
                        for m in range(k, k + written):
                            futures[order[m]] = last.produce_future
                        k += written
            finally:
                accumulator._appends_in_progress.decrement()
            if k < len(order):  # no open batch, it is full, or a record near the limit: the accumulator's way
                idx = order[k]
                r = records[idx]
                if _near_limit(r, self._limit):
                    p._ensure_valid_record_size(p._estimate_size_in_bytes(r.key, r.value, []))
                futures[idx], _, _, _ = accumulator.append(tp, timestamp_ms, r.key, r.value, [], now=now)
                k += 1
                p._sender.wakeup()  # as send() does on a new batch: the one before may be full


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


def next_offsets(records: Iterable) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets to commit after processing `records`: one past the last record of each partition."""
    last: dict[tuple[str, int], int] = {}
    get = last.get
    for r in records:  # plain tuples as keys: a TopicPartition per record cost 1 us
        key = (r.topic, r.partition)
        if r.offset > get(key, -1):
            last[key] = r.offset
    return {TopicPartition(*key): OffsetAndMetadata(off + 1, "", -1) for key, off in last.items()}


# the lag gauges' broker round trips are bounded: a slow broker delays the gauges, never the loop for long
END_OFFSETS_TIMEOUT_MS = 1000  # end offsets of partitions with no fetch yet (paused while restoring)
POSITION_TIMEOUT_MS = 200  # a partition's position (local unless a reset is pending)


def partition_lags(consumer: KafkaConsumer) -> dict[TopicPartition, int]:
    """Records left to read in each assigned partition whose position and end the broker gives in time."""
    assigned = consumer.assignment()
    ends = {tp: consumer.highwater(tp) for tp in assigned}
    unknown = [tp for tp, end in ends.items() if end is None]  # paused, or not fetched yet
    if unknown:
        try:
            ends.update(consumer.end_offsets(unknown, timeout_ms=END_OFFSETS_TIMEOUT_MS))
        except KafkaError:
            pass
    lags = {}
    for tp in assigned:
        try:
            pos = consumer.position(tp, timeout_ms=POSITION_TIMEOUT_MS)
        except KafkaError:
            continue
        if pos is not None and ends.get(tp) is not None:
            lags[tp] = max(ends[tp] - pos, 0)
    return lags


class Committer:
    """Publishes outputs and commits consumer offsets; with exactly-once both go into one transaction.

    The commit order lives here and nowhere else:
      exactly-once:  begin -> send offsets to the transaction -> send outputs -> commit
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
        self.appender = RecordAppender(producer)
        manager = getattr(producer, "_transaction_manager", None)  # what send_offsets' fast path needs
        self.offsets_direct = (manager is not None and getattr(producer, "_sender", None) is not None
                               and hasattr(manager, "send_offsets_to_transaction"))
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
            offsets_added = None
            if self.exactly_once:
                self.producer.begin_transaction()
                if offsets:
                    offsets_added = self.send_offsets(offsets, metadata)
            futures = self.appender.append(records)
            if self.exactly_once:
                if offsets_added is not None:
                    offsets_added.wait()  # raises what adding the offsets failed with
                self.producer.commit_transaction()  # fails when any record failed
            else:
                self.producer.flush()
                for future in dict.fromkeys(futures):  # flush() waits but does not raise: offsets only after all
                    if future.failed():
                        raise future.exception
                    if not future.is_done:  # a batch kafka-python split (too large) and sent again as new ones
                        raise KafkaError("a split batch was not acknowledged as a whole; publishing again")
        except BaseException as exc:  # handed to the caller's thread by wait()
            if self.exactly_once:
                self._abort_quietly()
            self._error = exc

    def fast_paths(self) -> dict[str, bool]:
        """Which of the producer's fast paths over kafka-python's internals this committer uses."""
        return {"append": bool(self.appender.direct), "offsets": self.offsets_direct}

    def send_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                     metadata: ConsumerGroupMetadata | str) -> TransactionalRequestResult | None:
        """Add `offsets` to the open transaction without waiting; the result to wait on (None: already done).

        KafkaProducer.send_offsets_to_transaction enqueues two requests (AddOffsetsToTxn, then TxnOffsetCommit)
        and blocks until both are answered; called before the records are appended, their round trips overlap
        with the appending (10-20 ms of CPU) instead of following it. Where kafka-python's producer lacks the
        parts this needs, its blocking call is used.
        """
        if not self.offsets_direct:
            self.producer.send_offsets_to_transaction(offsets, metadata)
            return None
        result = self.producer._transaction_manager.send_offsets_to_transaction(offsets, metadata)
        self.producer._sender.wakeup()
        return result

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort_transaction()
        except Exception as exc:  # the producer may be fenced or closed: the abort itself is best effort
            log.warning("abort_transaction failed: %s", exc)
