"""Faster decoding of fetched records for kafka-python's consumer.

kafka-python decodes each record of a fetched batch in pure Python through several layers (a DefaultRecord
object, CRC and deserializer hooks, then the ConsumerRecord), 7-10 us a record. In the daemon that was the
largest single cost after the network itself. FastPartitionRecords decodes a v2 batch (decompressed first
where needed) in one loop over its bytes and builds the same ConsumerRecords, 2-3x faster
(`python -m benchmarks.records`).

Everything around the per-record loop (batch CRC, aborted transactions, control batches, fetch positions)
is kafka-python 3.0's own code, kept in the same order. It is installed on one consumer instance, never
globally, and only where kafka-python's internals are those it was written for; otherwise the consumer keeps
its own decoding. Message format v2 is what every broker since 0.11 writes; older batches go the stock way.
"""

from __future__ import annotations

import logging

import kafka.errors as Errors
from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.record.default_records import DefaultRecordBatch

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
            # Record: Length, Attributes (int8, unused in v2), TimestampDelta, OffsetDelta, Key, Value, Headers.
            # The varints are zigzag-encoded; their common short forms are inlined (a call per field was a
            # third of the loop), the others call `varint`.
            b, c = data[pos], data[pos + 1]
            if c < 0x80 <= b:  # two bytes: the length of a record of 64 to 8191 bytes
                n = (b & 0x7F) | (c << 7)
                size, pos = (n >> 1) ^ -(n & 1), pos + 2
            else:
                size, pos = varint(data, pos)
            end = pos + size
            b = data[pos + 1]
            if b < 0x80:
                ts_delta, pos = (b >> 1) ^ -(b & 1), pos + 2
            else:
                ts_delta, pos = varint(data, pos + 1)
            b = data[pos]
            if b < 0x80:
                offset_delta, pos = (b >> 1) ^ -(b & 1), pos + 1
            else:
                offset_delta, pos = varint(data, pos)
            b = data[pos]
            if b < 0x80:
                n, pos = (b >> 1) ^ -(b & 1), pos + 1
            else:
                n, pos = varint(data, pos)
            if n >= 0:
                key, key_size, pos = data[pos:pos + n], n, pos + n
            else:
                key, key_size = None, -1
            b = data[pos]
            if b < 0x80:
                n, pos = (b >> 1) ^ -(b & 1), pos + 1
            elif data[pos + 1] < 0x80:  # a value of 64 to 8191 bytes
                n = (b & 0x7F) | (data[pos + 1] << 7)
                n, pos = (n >> 1) ^ -(n & 1), pos + 2
            else:
                n, pos = varint(data, pos)
            if n >= 0:
                value, value_size, pos = data[pos:pos + n], n, pos + n
            else:
                value, value_size = None, -1
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
