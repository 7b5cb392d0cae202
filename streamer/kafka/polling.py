"""Polling the input topics: one poll's records in order, topped up with what arrived meanwhile, and the failures
that kafka-python's rebalance callbacks cannot raise themselves handed to the loop."""

from __future__ import annotations

import threading
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

TOP_UP_MS = 20  # longest wait for the fetch that follows a poll (the broker answers it at once when data waits)


class Poller:
    """Polls a consumer for the run loop; counts revocations so that a batch polled across one is given up."""

    def __init__(self, stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        self.revocations = 0  # partitions revoked so far (a batch polled across a revocation is void)
        self.failure: BaseException | None = None  # raised by a rebalance callback, for the loop to raise

    def revoked(self) -> None:
        """Partitions were revoked (inside a poll)."""
        self.revocations += 1

    def poll(self, consumer, timeout_ms: int, max_records: int) -> list:
        """The records of one poll, in order; raises the failure of a commit made in a rebalance callback."""
        batch = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self.failure is not None:  # kafka-python swallows listener errors: the callback hands them over
            failure, self.failure = self.failure, None
            raise failure
        return [r for recs in batch.values() for r in recs]

    def top_up(self, consumer, records: list, max_records: int) -> list:
        """Add what reached the broker since the fetch that `records` came from.

        kafka-python sends a fetch only from inside a poll, and a poll answered by a fetch sent earlier returns
        what had arrived when the broker answered it: what arrived while the last batch was processed would
        wait a whole extra cycle. One more short poll fetches it into this batch.

        A rebalance inside that poll committed the work before `records` and dropped the state of every
        partition (eager protocol), to be restored as of the committed offsets, which are where `records`
        start. So `records` are given up: each of their partitions that this consumer still holds is sought
        back to its first record there (kafka-python keeps a retained partition's position, which is past
        them), and the others are left to their new owner, who starts at the committed offsets.
        """
        revocations = self.revocations
        fresh = self.poll(consumer, TOP_UP_MS, max_records - len(records))
        if self.revocations == revocations:
            return records + fresh
        start: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            start[key] = min(r.offset, start.get(key, r.offset))
        held = consumer.assignment()  # mid-rebalance this is still the old assignment, which is fine to seek
        for (topic, partition), offset in start.items():
            tp = TopicPartition(topic, partition)
            if tp in held:
                consumer.seek(tp, offset)
        return [r for r in fresh if (r.topic, r.partition) not in start]  # the others come after the seek

    def await_metadata(self, consumer, topics: list[str], timeout_s: float) -> None:
        """Hold the first join of the group until the consumer's metadata has every input topic.

        The group leader assigns partitions from its own metadata. When its first join comes before the first
        metadata response of the subscription, it finds none ("No partition metadata for topic"), assigns
        nothing, and kafka-python does not rejoin when the metadata arrives (dpkp/kafka-python#2377): the
        instance idled for good. The topics exist (checked at start), so this wait is one metadata round trip;
        past `timeout_s` (the session timeout) it fails the session, to be retried.
        """
        deadline = time.monotonic() + timeout_s
        missing = [t for t in topics if not consumer.partitions_for_topic(t)]
        while missing:
            if time.monotonic() > deadline:
                raise KafkaError(f"no partition metadata for input topics {missing}")
            self.stop_event.wait(0.1)
            missing = [t for t in missing if not consumer.partitions_for_topic(t)]


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
