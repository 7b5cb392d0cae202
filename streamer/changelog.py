"""Where stream state lives outside the hot store: the compacted changelog topic and a local cold store.

The changelog topic is co-partitioned with the input: a stream's state is written to the changelog
partition with the number of the input partition its readings came from. On assignment the new owner
reads those changelog partitions (read_committed) into its cold store; a stream that is not resident
is loaded from the cold store when its next reading arrives. The cold store is an SQLite file, so
memory stays flat however many streams a partition holds. A restore runs in slices between the loop's
polls, never inside a rebalance callback: the consumer keeps its place in the group however long it takes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, TopicPartition

from streamer import record_reader
from streamer.config import KafkaSettings
from streamer.transport import client_options, common_config

log = logging.getLogger(__name__)


COLD_PREFIX, COLD_SUFFIX = "streamer-cold-", ".sqlite"
_OPEN_HERE: set[str] = set()  # this process's own stores: never opened by the sweep (closing a descriptor of a
# file drops every POSIX lock the process holds on it, SQLite's included)


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock on fd without waiting; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep_stale_cold_files(directory: str | None = None) -> list[str]:
    """Delete the cold-store files in `directory` (default: the temp folder) that no live process holds.

    A store holds a flock on its file while it is open (a BSD lock on its own descriptor, which SQLite's POSIX
    locks on the same file never touch), so a file nobody holds was left by a process that was killed: its state
    is in the changelog, and the file is only disk used for nothing.
    """
    folder = directory or tempfile.gettempdir()
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not (name.startswith(COLD_PREFIX) and name.endswith(COLD_SUFFIX)):
            continue
        path = os.path.join(folder, name)
        if os.path.abspath(path) in _OPEN_HERE:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        try:
            if _try_lock(fd):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d cold-store files left by stopped processes in %s", len(removed), folder)
    return removed


class ColdSpill:
    """The engine's eviction and miss callbacks over a cold store: an evicted stream's latest state is kept locally
    (its committed state is in the changelog) for its return and for the next commit."""

    def __init__(self, cold: ColdStore, partition_of: Callable[[], dict[str, int]], loaded: Callable[[], None]) -> None:
        self.cold, self.partition_of, self.loaded = cold, partition_of, loaded

    def evicted(self, stream: str, blob: bytes) -> None:
        """Keep an evicted stream's snapshot under its input partition."""
        self.cold.put_many([(stream, self.partition_of().pop(stream), blob)])

    def missed(self, stream: str) -> bytes | None:
        """The snapshot of a stream the hot store does not hold, if kept (a stale one is discarded by the store)."""
        found = self.cold.get(stream)
        if found is None:
            return None
        self.loaded()
        return found[1]


class ColdStore:
    """Latest state snapshot of every known stream that is not (or not only) in the hot store."""

    def __init__(self, directory: str | None = None) -> None:
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix=COLD_PREFIX, suffix=COLD_SUFFIX, dir=directory)
        _try_lock(fd)  # held until close: while it is, no other process sweeps the file away
        self._lock_fd = fd
        _OPEN_HERE.add(os.path.abspath(self.path))
        sweep_stale_cold_files(directory)
        # One process owns the file; durability comes from the changelog, so the file needs no fsync.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE state (stream TEXT PRIMARY KEY, part INTEGER NOT NULL, blob BLOB NOT NULL)")
        self.db.execute("CREATE INDEX state_part ON state (part)")

    def put_many(self, rows: Iterable[tuple[str, int, bytes]]) -> None:
        """Insert or replace (stream, partition, snapshot) rows."""
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", rows)
        self.db.execute("COMMIT")

    def delete_many(self, streams: Iterable[str]) -> None:
        """Forget streams (a tombstone in the changelog)."""
        self.db.executemany("DELETE FROM state WHERE stream = ?", ((s,) for s in streams))

    def get(self, stream: str) -> tuple[int, bytes] | None:
        """(partition, snapshot) of a stream, or None when it has no stored state."""
        row = self.db.execute("SELECT part, blob FROM state WHERE stream = ?", (stream,)).fetchone()
        return None if row is None else (row[0], row[1])

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget every stream of the given partitions (they were revoked)."""
        self.db.executemany("DELETE FROM state WHERE part = ?", ((p,) for p in partitions))

    def clear(self) -> None:
        """Forget every stream (after a rewind to the last commit, or a model whose state shapes differ)."""
        self.db.execute("DELETE FROM state")

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM state").fetchone()[0]

    def close(self) -> None:
        """Close and delete the file."""
        self.db.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._lock_fd)
        _OPEN_HERE.discard(os.path.abspath(self.path))


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
            record_reader.install(self._consumer)
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
