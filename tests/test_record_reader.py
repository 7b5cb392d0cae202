"""The fast record decoder returns exactly what kafka-python's own decoding returns, batch by batch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from streamer.config import KafkaSettings
from streamer.kafka import fast_paths
from streamer.kafka.clients import make_consumer
from streamer.kafka.fast_paths import FastPartitionRecords

TP = TopicPartition("readings", 3)
GZIP = 1


def build(batches: list[list[tuple]], magic: int = 2, compression: int = 0, first_offset: int = 0) -> bytes:
    """Concatenated record batches; each record is (timestamp, key, value, headers)."""
    out, offset = b"", first_offset
    for records in batches:
        b = MemoryRecordsBuilder(magic=magic, compression_type=compression, batch_size=1 << 24, offset=offset)
        for ts, key, value, headers in records:
            assert b.append(timestamp=ts, key=key, value=value, headers=headers if magic == 2 else []) is not None
        b.close()
        out += bytes(b.buffer())
        offset += len(records)
    return out


def take_all(cls, buf: bytes, fetch_offset: int = 0, n: int | None = None) -> tuple[list, int, int, int]:
    part = cls(fetch_offset, TP, MemoryRecords(buf), check_crcs=True)
    got = []
    while part:
        chunk = part.take(n)
        got.extend(chunk)
        if not chunk:
            break
    return got, part.next_fetch_offset, part.records_read, part.bytes_read


def same_as_stock(buf: bytes, fetch_offset: int = 0, n: int | None = None) -> list:
    stock = take_all(Fetcher.PartitionRecords, buf, fetch_offset, n)
    fast = take_all(FastPartitionRecords, buf, fetch_offset, n)
    assert fast == stock
    return fast[0]


def test_supported_on_the_pinned_kafka_python():
    assert fast_paths.SUPPORTED  # otherwise the daemon silently falls back to the slower stock decoding


def test_typical_readings_in_several_batches():
    base = 1_732_712_345_000
    batches = [[(base + 1000 * (i + 20 * j), f"pump-{i % 7}".encode(),
                 f'{{"stream":"pump-{i % 7}","ts":{base + i},"values":[{i / 3}]}}'.encode(), [])
                for i in range(20)] for j in range(4)]
    got = same_as_stock(build(batches), n=7)
    assert [r.offset for r in got] == list(range(80))
    assert got[5].key == b"pump-5" and isinstance(got[5].value, bytes)


def test_nulls_headers_long_varints_and_negative_time_deltas():
    records = [
        (10_000_000, None, b"x", []),
        (10_000_000 - 500, b"k", None, []),  # a timestamp before the batch's first: negative delta
        (10_000_000 + 2**40, b"k" * 200, b"v" * 70_000, [("trace", b"abc"), ("empty", None), ("", b"")]),
        (10_000_000, b"", b"", [("h\u00e9", b"\x00\xff")]),
    ]
    got = same_as_stock(build([records]))
    assert got[0].key is None and got[1].value is None and got[2].serialized_value_size == 70_000
    assert got[2].headers == [("trace", b"abc"), ("empty", None), ("", b"")]


def test_compressed_batches_and_a_fetch_offset_inside_a_batch():
    records = [(1000 + i, b"s", f"value {i}".encode(), []) for i in range(50)]
    buf = build([records[:25], records[25:]], compression=GZIP, first_offset=100)
    got = same_as_stock(buf, fetch_offset=110, n=9)  # a fetch from offset 110 skips 100..109
    assert got[0].offset == 110 and got[-1].offset == 149


def test_legacy_message_format_goes_the_stock_way():
    records = [(1000 + i, b"s", f"value {i}".encode(), []) for i in range(10)]
    assert len(same_as_stock(build([records], magic=1))) == 10


def test_a_corrupt_record_is_refused():
    records = [(1000 + i, b"s", f"value {i}".encode(), []) for i in range(10)]
    buf = bytearray(build([records]))
    buf[-5] ^= 0xFF  # inside the last record: the batch CRC fails
    with pytest.raises(CorruptRecordError):
        take_all(FastPartitionRecords, bytes(buf))
    buf[-5] ^= 0xFF
    buf[61] += 2  # the first record's length (zigzag): one byte too long for its fields
    for cls in (Fetcher.PartitionRecords, FastPartitionRecords):  # without the CRC check, the structure is checked
        part = cls(0, TP, MemoryRecords(bytes(buf)), check_crcs=False)
        with pytest.raises(CorruptRecordError):
            while part and part.take():
                pass


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 2**42), st.one_of(st.none(), st.binary(max_size=300)),
                                   st.one_of(st.none(), st.binary(max_size=20_000)),
                                   st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=9))),
                                            max_size=2)),
                         min_size=1, max_size=12), min_size=1, max_size=4),
       st.integers(1, 10))
def test_any_batches_decode_as_kafka_python_decodes_them(batches, n):
    same_as_stock(build(batches), n=n)


def _read(consumer, topic: str, partitions: int, n: int) -> list:
    """All records of the topic, by partition and offset: n of them, then one more poll to catch extras."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got: list = []
    for _ in range(100):
        for recs in consumer.poll(timeout_ms=300).values():
            got.extend(recs)
        if len(got) >= n:
            break
    for recs in consumer.poll(timeout_ms=300).values():
        got.extend(recs)
    consumer.close(autocommit=False)
    return sorted(got, key=lambda r: (r.partition, r.offset))


def test_the_daemons_consumer_reads_committed_transactions_as_kafka_python_does(kafka_bootstrap, new_topic):
    """Transactional batches, abort and commit markers, aborted data and plain records, over the wire."""
    topic = new_topic("reader", partitions=2)
    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    tx = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"rr-{topic}")
    tx.init_transactions()
    for round_ in range(3):
        for commit in (True, False):
            tx.begin_transaction()
            for i in range(40):
                tx.send(topic, key=f"s{i % 5}".encode(), value=f"{round_}-{commit}-{i}".encode(),
                        headers=[("h", b"1")] if i % 7 == 0 else [])
            tx.flush()
            (tx.commit_transaction if commit else tx.abort_transaction)()
        for i in range(15):
            plain.send(topic, key=None, value=f"plain-{round_}-{i}".encode())
        plain.flush()
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, input_topics=[topic], group_id=f"g-{topic}")
    fast_consumer = make_consumer(settings)
    stock_consumer = make_consumer(settings, stock_decoding=True)
    assert fast_paths.installed(fast_consumer) and not fast_paths.installed(stock_consumer)
    n = 3 * 40 + 3 * 15  # the committed transactions and the plain records
    fast, stock = _read(fast_consumer, topic, 2, n), _read(stock_consumer, topic, 2, n)
    assert fast == stock
    assert len(fast) == n and not any(b"False" in r.value for r in fast)
    plain.close()
    tx.close()
