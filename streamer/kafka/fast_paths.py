"""The fast paths over kafka-python's internals, and the only module that touches them.

Three paths, each used only where kafka-python's internals are those it was written for (3.0, the range pinned in
pyproject.toml), each otherwise left to kafka-python's stock path, which the service reports
(streamer_kafka_fast_path{path} 0 and a warning), and each checked against kafka-python's own encoding or decoding
by tests/test_record_reader.py and tests/test_transport_committer.py on every CI run:

- decode: FastPartitionRecords decodes a fetched v2 batch (decompressed first where needed) in one loop over its
  bytes and builds the same ConsumerRecords kafka-python's layers (a DefaultRecord object, CRC and deserializer
  hooks) build one record at a time (`python -m benchmarks.records`). Everything around the per-record loop
  (batch CRC, aborted transactions, control batches, fetch positions) is kafka-python's own code in the same
  order; it is installed on one consumer instance, never globally; older message formats go the stock way.
- append: RecordAppender writes a commit's records straight into each partition's open producer batch.
- offsets: send_offsets_nowait adds a transaction's offsets without blocking, so their round trips overlap with
  the appending.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import kafka.errors as Errors
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint
from kafka.structs import OffsetAndMetadata

from streamer.schema import OutRecord

if TYPE_CHECKING:  # kafka-python internals, named in annotations only: the code runs where they differ
    from kafka.producer.transaction_manager import TransactionalRequestResult
    from kafka.structs import ConsumerGroupMetadata

log = logging.getLogger(__name__)

_LOG_APPEND_TIME = DefaultRecordBatch.LOG_APPEND_TIME
_READ_COMMITTED = IsolationLevel.READ_COMMITTED


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint of any length at `pos`: (value, position after it)."""
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Errors.CorruptRecordError("varint longer than 10 bytes")


def _headers(data: bytes, pos: int, count: int) -> tuple[list, int]:
    """Record headers [(key, value)], as kafka-python returns them."""
    headers = []
    for _ in range(count):
        n, pos = _varint(data, pos)
        if n < 0:
            raise Errors.CorruptRecordError(f"Invalid negative header key size {n}")
        key = data[pos:pos + n].decode("utf-8")
        pos += n
        n, pos = _varint(data, pos)
        if n >= 0:
            value = data[pos:pos + n]
            pos += n
        else:
            value = None
        headers.append((key, value))
    return headers, pos


def _header_size(headers: list) -> int:
    """ConsumerRecord.serialized_header_size, as kafka-python computes it."""
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers) if headers else -1


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at `pos`: (value, position after it); one- and two-byte ones without a loop."""
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    c = data[pos + 1]
    if c < 0x80:
        n = (b & 0x7F) | (c << 7)
        return (n >> 1) ^ -(n & 1), pos + 2
    n, pos = _uvarint(data, pos)
    return (n >> 1) ^ -(n & 1), pos


def decode_batch(batch: DefaultRecordBatch, topic: str, partition: int, leader_epoch: int) -> tuple[list, int]:
    """A v2 batch's records as ConsumerRecords equal to kafka-python's, and their bytes; `batch` as fetched."""
    batch._maybe_uncompress()
    data = bytes(batch._buffer)
    pos = batch._pos
    base_offset, first_ts, count = batch.base_offset, batch.first_timestamp, batch.records_count
    ts_type = batch.timestamp_type
    log_append_ts = batch.max_timestamp if ts_type == _LOG_APPEND_TIME else None
    new, cls, varint = tuple.__new__, ConsumerRecord, _varint  # tuple.__new__: the namedtuple's __new__ minus a call
    records, total = [], 0
    append = records.append
    try:
        for _ in range(count):
            # Record: Length, Attributes (int8, unused in v2), TimestampDelta, OffsetDelta, Key, Value, Headers
            size, pos = varint(data, pos)
            end = pos + size
            ts_delta, pos = varint(data, pos + 1)
            offset_delta, pos = varint(data, pos)
            n, pos = varint(data, pos)
            key, key_size, pos = (data[pos:pos + n], n, pos + n) if n >= 0 else (None, -1, pos)
            n, pos = varint(data, pos)
            value, value_size, pos = (data[pos:pos + n], n, pos + n) if n >= 0 else (None, -1, pos)
            if data[pos] == 0:  # no headers
                headers, header_size, pos = [], -1, pos + 1
            else:
                n, pos = varint(data, pos)
                if n < 0:
                    raise Errors.CorruptRecordError(f"Found invalid number of record headers {n}")
                headers, pos = _headers(data, pos, n)
                header_size = _header_size(headers)
            if pos != end:
                raise Errors.CorruptRecordError(
                    f"Invalid record size: expected to read {size} bytes in record payload, but instead read "
                    f"{pos - end + size}")
            total += size
            append(new(cls, (topic, partition, leader_epoch, base_offset + offset_delta,
                             first_ts + ts_delta if log_append_ts is None else log_append_ts, ts_type, key, value,
                             headers, None, key_size, value_size, header_size)))
    except (ValueError, IndexError) as exc:  # truncated bytes, or a header key that is not UTF-8
        raise Errors.CorruptRecordError(f"Found invalid record structure: {exc!r}") from None
    if pos != len(data):
        raise Errors.CorruptRecordError(f"{len(data) - pos} unconsumed bytes after all records consumed")
    return records, total


class FastPartitionRecords(Fetcher.PartitionRecords):
    """kafka-python's PartitionRecords with the per-record loop of v2 batches replaced by decode_batch."""

    def _unpack_records(self, tp, records, key_deserializer, value_deserializer):
        if key_deserializer is not None or value_deserializer is not None:
            yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
            return
        # From here on kafka-python 3.0.12's Fetcher.PartitionRecords._unpack_records (Apache 2.0), except for
        # the loop over a v2 batch's records.
        try:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise Errors.CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset {batch.base_offset} "
                        "failed crc check")
                if batch.magic != 2:  # message format v0/v1: the stock loop, which checks per-record CRCs
                    yield from self._stock_records(tp, batch)
                    batch = records.next_batch()
                    continue
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == _READ_COMMITTED and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:  # commit and abort markers are not returned to the consumer
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                decoded, size = decode_batch(batch, tp.topic, tp.partition, self.leader_epoch)
                self.records_read += len(decoded)
                self.bytes_read += size
                for record in decoded:
                    self.next_fetch_offset = record.offset + 1
                    yield record
                batch = records.next_batch()
            else:
                # v2 keeps a batch's last offset even when compaction removed its last record: fetch after it
                if last_batch and last_batch.magic == 2:
                    self.next_fetch_offset = last_batch.next_offset
                self.drain()
        except StopIteration:  # as kafka-python: a StopIteration here would silently end the generator
            log.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset") from None

    def _stock_records(self, tp, batch):
        """Records of a legacy (v0/v1) batch, decoded as kafka-python does."""
        for record in batch:
            if self.check_crcs and not record.validate_crc():
                raise Errors.CorruptRecordError(
                    f"Record for partition {self.topic_partition} at offset {record.offset} failed crc check")
            key, value, headers = record.key, record.value, record.headers
            self.records_read += 1
            self.bytes_read += record.size_in_bytes
            self.next_fetch_offset = record.offset + 1
            yield ConsumerRecord(
                tp.topic, tp.partition, self.leader_epoch, record.offset, record.timestamp, record.timestamp_type,
                key, value, headers, record.checksum, len(key) if key is not None else -1,
                len(value) if value is not None else -1, _header_size(headers))


def _supported() -> bool:
    """Whether kafka-python's internals are those FastPartitionRecords was written for."""
    try:
        batch_slots = DefaultRecordBatch.__slots__
        pr = Fetcher.PartitionRecords
        return (ConsumerRecord._fields == ("topic", "partition", "leader_epoch", "offset", "timestamp",
                                           "timestamp_type", "key", "value", "headers", "checksum",
                                           "serialized_key_size", "serialized_value_size",
                                           "serialized_header_size")
                and {"_buffer", "_pos"} <= set(batch_slots) and hasattr(DefaultRecordBatch, "_maybe_uncompress")
                and all(hasattr(pr, m) for m in ("_consume_aborted_transactions_up_to", "_contains_abort_marker",
                                                 "_is_batch_aborted", "drain", "take")))
    except AttributeError:
        return False


SUPPORTED = _supported()


def install(consumer: KafkaConsumer) -> bool:
    """Decode this consumer's fetched records with FastPartitionRecords; False (stock decoding) if unsupported."""
    fetcher = getattr(consumer, "_fetcher", None)
    if not SUPPORTED or fetcher is None or not hasattr(fetcher, "PartitionRecords"):
        return False  # the service reports it (streamer_kafka_fast_path{path="decode"} 0 and a warning)
    fetcher.PartitionRecords = FastPartitionRecords  # an instance attribute: other consumers are untouched
    return True


def installed(consumer: KafkaConsumer) -> bool:
    """Whether this consumer decodes its fetched records with FastPartitionRecords."""
    return getattr(getattr(consumer, "_fetcher", None), "PartitionRecords", None) is FastPartitionRecords


# -- append ---------------------------------------------------------------------------------------
def _varint_bytes(value: int) -> bytes:
    """Kafka's zigzag varint of `value`."""
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


_VARINTS = [_varint_bytes(v) for v in range(1 << 14)]  # lengths, offset and time deltas are mostly small


def _encoded_varint(value: int) -> bytes:
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
    ts_delta = _encoded_varint(0 if empty else timestamp_ms - builder._first_timestamp)
    offset = first = builder_of._next_offset
    varint, largest = _encoded_varint, batch.max_record_size
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
    (append_to_batch: byte for byte what the builder writes), and they share that batch's future: a
    fraction of the cost per record of send() or of the accumulator's append (figures in benchmarks/README.md).
    Records without a partition (through send(), in order among
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


# -- offsets --------------------------------------------------------------------------------------
def offsets_nowait_supported(producer: KafkaProducer) -> bool:
    """Whether send_offsets_nowait can run on this producer (else its blocking send_offsets_to_transaction)."""
    manager = getattr(producer, "_transaction_manager", None)
    return (manager is not None and getattr(producer, "_sender", None) is not None
            and hasattr(manager, "send_offsets_to_transaction"))


def send_offsets_nowait(producer: KafkaProducer, offsets: dict[TopicPartition, OffsetAndMetadata],
                        metadata: ConsumerGroupMetadata | str) -> TransactionalRequestResult:
    """Enqueue the two requests that add `offsets` to the open transaction (AddOffsetsToTxn, TxnOffsetCommit) and
    return the result to wait on, where KafkaProducer.send_offsets_to_transaction would block until both are
    answered."""
    result = producer._transaction_manager.send_offsets_to_transaction(offsets, metadata)
    producer._sender.wakeup()
    return result
