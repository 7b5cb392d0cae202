"""The committer on the real broker: commits run in the background, one at a time, in order; failures surface."""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import MessageSizeTooLargeError
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import OffsetAndMetadata

from streamer.kafka.committer import Committer
from streamer.kafka.fast_paths import RecordAppender, append_to_batch
from streamer.schema import OutRecord
from tests.test_kafka_broker import _read_all


def _consumer_with_records(bootstrap: str, src: str, n: int) -> tuple[KafkaConsumer, list]:
    plain = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(n):
        plain.send(src, key=b"s", value=str(i).encode())
    plain.flush()
    plain.close()
    consumer = KafkaConsumer(src, bootstrap_servers=bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             isolation_level="read_committed")
    records: list = []
    while len(records) < n:
        for recs in consumer.poll(timeout_ms=1000).values():
            records.extend(recs)
    return consumer, records


def _outputs(dst: str, records: list) -> list[OutRecord]:
    return [OutRecord(dst, r.key, b"out-" + r.value, 0) for r in records]


def _offset(src: str, n: int) -> dict:
    return {TopicPartition(src, 0): OffsetAndMetadata(n, "", -1)}


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly_once", "at_least_once"])
def test_pipelined_commits_publish_in_order_and_commit_the_last_offsets(kafka_bootstrap, new_topic, exactly_once):
    src, dst = new_topic("src"), new_topic("dst")
    consumer, records = _consumer_with_records(kafka_bootstrap, src, 20)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all",
                             **({"transactional_id": f"tx-{uuid.uuid4().hex[:8]}"} if exactly_once else {}))
    committer = Committer(consumer, producer, exactly_once)
    committer.start(_outputs(dst, records[:10]), _offset(src, 10))
    committer.start(_outputs(dst, records[10:]), _offset(src, 20))  # waits for the first one, then runs
    if not exactly_once:  # at-least-once offsets go to the consumer on the caller's thread, in wait()
        assert consumer.committed(TopicPartition(src, 0)) == 10
    while not committer.idle():
        time.sleep(0.01)
    time.sleep(0.3)  # the commit is done; the time it sits done before the wait is not its duration
    waited = time.perf_counter()
    assert committer.wait() is True
    assert 0 < committer.last_seconds < 0.3 + (time.perf_counter() - waited)
    assert committer.wait() is False  # nothing in flight any more
    assert committer.idle()
    assert consumer.committed(TopicPartition(src, 0)) == 20
    producer.close()
    consumer.close()
    assert [m.value for m in _read_all(kafka_bootstrap, dst, 20)] == [f"out-{i}".encode() for i in range(20)]


def test_offsets_join_the_transaction_before_the_records_without_blocking(kafka_bootstrap, new_topic):
    """The offsets' round trips start before the records are appended; the result is waited on before commit."""
    src, dst = new_topic("src"), new_topic("dst")
    consumer, records = _consumer_with_records(kafka_bootstrap, src, 4)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    committer = Committer(consumer, producer, exactly_once=True)
    producer.begin_transaction()
    added = committer.send_offsets(_offset(src, 4), consumer.group_metadata())
    assert added is not None  # the installed kafka-python has what the non-blocking path needs
    committer.appender.append(_outputs(dst, records))
    assert added.wait(timeout_ms=10_000) is True
    producer.commit_transaction()
    assert consumer.committed(TopicPartition(src, 0)) == 4
    producer.close()
    consumer.close()
    assert [m.value for m in _read_all(kafka_bootstrap, dst, 4)] == [f"out-{i}".encode() for i in range(4)]


def test_offsets_fall_back_to_the_blocking_call_without_kafka_pythons_internals():
    class Blocking:  # a producer without the transaction manager the non-blocking path reaches into
        config = {"max_request_size": 1 << 20}

        def __init__(self) -> None:
            self.sent: list = []

        def send_offsets_to_transaction(self, offsets, metadata) -> None:
            self.sent.append((offsets, metadata))

    producer = Blocking()
    committer = Committer(None, producer, exactly_once=False)
    assert committer.fast_paths() == {"append": False, "offsets": False}  # reported: streamer_kafka_fast_path 0
    assert committer.send_offsets(_offset("src", 3), "group") is None
    assert producer.sent == [(_offset("src", 3), "group")]


def test_a_failed_background_commit_is_raised_by_wait_and_leaves_nothing_committed(kafka_bootstrap, new_topic):
    src, dst = new_topic("src"), new_topic("dst")
    consumer, records = _consumer_with_records(kafka_bootstrap, src, 5)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}",
                             max_request_size=10_000)
    committer = Committer(consumer, producer, exactly_once=True)
    too_big = OutRecord(dst, b"s", b"x" * 20_000, 0)
    doomed = [OutRecord(dst, b"s", b"aborted", 0)] * 3
    committer.start(doomed + [too_big], _offset(src, 5))
    with pytest.raises(MessageSizeTooLargeError):
        committer.wait()
    assert consumer.committed(TopicPartition(src, 0)) is None
    # The transaction was aborted: the producer can commit the same work again, and only that is visible.
    committer.commit(_outputs(dst, records), _offset(src, 5))
    assert consumer.committed(TopicPartition(src, 0)) == 5
    committer.close()
    producer.close()
    consumer.close()
    assert [m.value for m in _read_all(kafka_bootstrap, dst, 5)] == [f"out-{i}".encode() for i in range(5)]


def test_the_appender_queues_records_in_order_on_their_partitions(kafka_bootstrap, new_topic):
    a, b = new_topic("a", partitions=2), new_topic("b")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    producer.init_transactions()
    appender = RecordAppender(producer)
    assert appender.direct  # the installed kafka-python is the one it was written against
    records = [OutRecord(a, f"k{i}".encode(), f"v{i}".encode(), i % 2) for i in range(40)]
    records += [OutRecord(b, b"free", b"partitioned by send()", None)]
    producer.begin_transaction()
    futures = appender.append(records)
    producer.commit_transaction()
    assert len(futures) == len(records) and all(f.succeeded() for f in futures)
    # per partition: the future of the record that opened its batch, then the batch's, shared by the others
    assert len(set(futures[:40])) == 4
    producer.close()
    got = _read_all(kafka_bootstrap, a, 40)
    for part in (0, 1):
        assert [(m.key, m.value) for m in got if m.partition == part] == [
            (r.key, r.value) for r in records[:40] if r.partition == part]
    assert [m.value for m in _read_all(kafka_bootstrap, b, 1)] == [b"partitioned by send()"]


def _batch(batch_size: int = 1 << 20) -> ProducerBatch:
    return ProducerBatch(TopicPartition("t", 0), MemoryRecordsBuilder(2, 0, batch_size))


def _bytes_of(batch: ProducerBatch) -> bytes:
    batch.records.set_producer_state(7, 1, 0, True)
    batch.records.close()
    return bytes(batch.records.buffer())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=200)),
                          st.one_of(st.none(), st.binary(max_size=20_000))), min_size=1, max_size=60),
       st.integers(0, 3), st.integers(0, 100_000))
def test_appending_to_a_batch_writes_what_kafka_pythons_builder_writes(pairs, stock_first, later_ms):
    """Byte for byte, including null keys and values, long varints and a later append's time delta."""
    ts0, now = 1_732_712_345_000, time.monotonic()
    records = [OutRecord("t", k, v, 0) for k, v in pairs]
    stock, fast = _batch(), _batch()
    for r in records[:stock_first]:  # a batch the accumulator opened and started
        assert stock.try_append(ts0, r.key, r.value, []) is not None
        assert fast.try_append(ts0, r.key, r.value, []) is not None
    for r in records[stock_first:]:
        assert stock.try_append(ts0 + later_ms, r.key, r.value, []) is not None
    order = list(range(len(records)))
    written = append_to_batch(fast, records, order, min(stock_first, len(records)), ts0 + later_ms, now, 1 << 20)
    assert written == max(len(records) - stock_first, 0)
    assert fast.max_record_size == stock.max_record_size and fast.record_count == stock.record_count
    assert _bytes_of(fast) == _bytes_of(stock)


def test_a_full_batch_stops_where_kafka_pythons_builder_stops():
    records = [OutRecord("t", b"k", b"v" * 100, 0) for _ in range(50)]
    stock, fast = _batch(2000), _batch(2000)
    n_stock = 0
    while n_stock < 50 and stock.try_append(1000, b"k", b"v" * 100, []) is not None:
        n_stock += 1
    assert 0 < n_stock < 50
    assert append_to_batch(fast, records, list(range(50)), 0, 1000, time.monotonic(), 1 << 20) == n_stock
    assert _bytes_of(fast) == _bytes_of(stock)
    big = [OutRecord("t", b"k", b"v" * 5000, 0)]  # larger than the batch: fits only as a batch's first record
    assert append_to_batch(_batch(2000), big, [0], 0, 1000, time.monotonic(), 1 << 20) == 1
    assert append_to_batch(_batch(2000), big, [0], 0, 1000, time.monotonic(), 5000) == 0  # near the size limit
