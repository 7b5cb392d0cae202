"""Restoring state from the compacted changelog topic into the cold store.

The changelog topic is co-partitioned with the input: a stream's state is written to the changelog partition
with the number of the input partition its readings came from. On assignment the new owner reads those changelog
partitions (read_committed) into its cold store. A restore runs in slices between the loop's polls, never inside
a rebalance callback: the consumer keeps its place in the group however long it takes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition

from streamer.cold_store import ColdStore
from streamer.config import KafkaSettings
from streamer.kafka import fast_paths
from streamer.kafka.clients import client_options, common_config


class ChangelogRestorer:
    """Restores the state of newly assigned input partitions in bounded slices between the loop's polls.

    The rebalance callbacks only record what changed (`assigned` pauses the input partitions, so that no reading
    is processed before its stream's state is there); `step`, called by the loop between polls, reads the
    changelog partitions into the cold store and resumes each input partition once its state is complete. The
    group consumer keeps polling meanwhile (heartbeats, max.poll.interval.ms), and the partitions already
    restored are processed. The changelog is read by a consumer of its own (no group, read_committed), each
    partition from its start to the last stable offset it had when its restore began.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, cold: ColdStore, group_consumer: KafkaConsumer) -> None:
        self.kafka, self.topic, self.cold, self.group_consumer = kafka, topic, cold, group_consumer
        self._consumer: KafkaConsumer | None = None
        self._waiting: dict[int, set[TopicPartition]] = {}  # partition -> its paused input partitions
        self._to_add: set[int] = set()
        self._to_abandon: set[int] = set()
        self._end: dict[int, int] = {}  # changelog partition being read -> the offset at which it is complete
        self._left: dict[int, int] = {}  # changelog partition being read -> records left (at most)

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        """Pause newly assigned input partitions until their state is restored (safe in a rebalance callback)."""
        tps = list(tps)
        self.group_consumer.pause(*tps)
        for tp in tps:
            self._waiting.setdefault(tp.partition, set()).add(tp)
            self._to_add.add(tp.partition)

    def revoked(self, tps: Iterable[TopicPartition]) -> None:
        """Give up the restore of revoked partitions (safe in a rebalance callback)."""
        for tp in tps:
            self._waiting.pop(tp.partition, None)
            self._to_add.discard(tp.partition)
            self._to_abandon.add(tp.partition)

    @property
    def restoring(self) -> bool:
        """Some assigned input partition still waits for its state."""
        return bool(self._waiting)

    def remaining(self) -> dict[int, int]:
        """Records left to read of each partition still restoring (an upper bound: compaction and transaction
        markers leave gaps; a partition whose restore has not begun counts 0 until it does)."""
        return {p: self._left.get(p, 0) for p in sorted(self._waiting)}

    def step(self, max_s: float, max_records: int = 20_000) -> tuple[list[int], int]:
        """Restore for about `max_s` seconds (one poll at least); (partitions resumed, records applied)."""
        self._start_and_stop()
        done = [p for p in list(self._waiting) if p not in self._end]  # nothing to read: complete at once
        n = 0
        if self._end:
            consumer = self._client()
            deadline = time.monotonic() + max_s
            while self._end:
                wait_ms = max(1, min(100, int((deadline - time.monotonic()) * 1000)))
                for records in consumer.poll(timeout_ms=wait_ms, max_records=max_records).values():
                    _apply(self.cold, records)
                    n += len(records)
                finished = self._positions(consumer)
                if finished:
                    done += finished
                    self._reassign()
                if time.monotonic() >= deadline:
                    break
        for p in done:
            self.group_consumer.resume(*self._waiting.pop(p, ()))
        return done, n

    def close(self) -> None:
        """Close the changelog consumer; a restore in progress is given up."""
        self._waiting.clear()
        self._to_add.clear()
        self._to_abandon.clear()
        self._end.clear()
        self._left.clear()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _start_and_stop(self) -> None:
        """Apply what the callbacks recorded: stop abandoned restores, then start new ones from the start."""
        gone, self._to_abandon = self._to_abandon & set(self._end), set()
        for p in gone:
            del self._end[p], self._left[p]
        new, self._to_add = sorted(self._to_add), set()
        if not new:
            if gone:
                self._reassign()
            return
        consumer = self._client()
        tps = [TopicPartition(self.topic, p) for p in new]
        end, begin = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        todo = [tp for tp in tps if end[tp] > begin[tp]]
        for tp in todo:
            self._end[tp.partition], self._left[tp.partition] = end[tp], end[tp] - begin[tp]
        self._reassign()
        if todo:
            consumer.seek_to_beginning(*todo)

    def _positions(self, consumer: KafkaConsumer) -> list[int]:
        """Update the records left of each partition; remove and return those that are complete."""
        finished = []
        for p, end in list(self._end.items()):
            position = consumer.position(TopicPartition(self.topic, p))
            self._left[p] = max(0, end - position)
            if position >= end:
                finished.append(p)
                del self._end[p], self._left[p]
        return finished

    def _reassign(self) -> None:
        self._client().assign([TopicPartition(self.topic, p) for p in sorted(self._end)])

    def _client(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(**common_config(self.kafka), **client_options(self.kafka, "consumer"),
                                           group_id=None, enable_auto_commit=False, isolation_level="read_committed")
            fast_paths.install(self._consumer)
        return self._consumer


def _apply(cold: ColdStore, records: list) -> None:
    """Apply changelog records in order: a value upserts the stream's state, a tombstone deletes it."""
    rows: list[tuple[str, int, bytes]] = []
    for r in records:
        if r.value is None:
            cold.put_many(rows)
            rows = []
            cold.delete_many([r.key.decode()])
        else:
            rows.append((r.key.decode(), r.partition, r.value))
    cold.put_many(rows)
