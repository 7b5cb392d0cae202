"""The local broker works for what the daemon needs: plain exchange, and a transaction that commits offsets."""

from __future__ import annotations

import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata


def _read_all(bootstrap: str, topic: str, expected: int, isolation: str = "read_committed") -> list:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level=isolation,
        enable_auto_commit=False, consumer_timeout_ms=5000,
    )
    out = []
    for msg in consumer:
        out.append(msg)
        if len(out) >= expected:
            break
    consumer.close()
    return out


def test_produce_and_consume_a_message(kafka_bootstrap, new_topic):
    topic = new_topic("exchange")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topic, key=b"pump-17", value=b"hello").get(timeout=30)
    producer.close()
    (msg,) = _read_all(kafka_bootstrap, topic, 1)
    assert (msg.key, msg.value) == (b"pump-17", b"hello")


def test_transaction_commits_outputs_and_consumer_offsets(kafka_bootstrap, new_topic):
    src, dst = new_topic("src"), new_topic("dst")
    group = f"g-{uuid.uuid4().hex[:8]}"
    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(10):
        plain.send(src, key=b"s", value=str(i).encode())
    plain.flush()
    plain.close()

    consumer = KafkaConsumer(
        src, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed",
    )
    records = []
    while len(records) < 10:
        for recs in consumer.poll(timeout_ms=1000).values():
            records.extend(recs)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{group}")
    producer.init_transactions()

    # An aborted transaction leaves neither outputs nor offsets behind.
    producer.begin_transaction()
    producer.send(dst, value=b"aborted")
    producer.flush()  # unflushed records are dropped on abort; flush so the broker really holds one
    producer.send_offsets_to_transaction(
        {TopicPartition(src, 0): OffsetAndMetadata(5, "", -1)}, consumer.group_metadata())
    producer.abort_transaction()
    assert consumer.committed(TopicPartition(src, 0)) is None

    producer.begin_transaction()
    for r in records:
        producer.send(dst, value=b"out-" + r.value)
    producer.send_offsets_to_transaction(
        {TopicPartition(src, 0): OffsetAndMetadata(10, "", -1)}, consumer.group_metadata())
    producer.commit_transaction()
    producer.close()

    assert consumer.committed(TopicPartition(src, 0)) == 10
    consumer.close()
    committed = _read_all(kafka_bootstrap, dst, 10)
    assert [m.value for m in committed] == [f"out-{i}".encode() for i in range(10)]
    # read_uncommitted sees the aborted record too: the broker really ran both transactions.
    everything = _read_all(kafka_bootstrap, dst, 11, isolation="read_uncommitted")
    assert b"aborted" in [m.value for m in everything]
