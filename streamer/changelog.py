"""Where stream state lives outside the hot store: the compacted changelog topic and a local cold store.

The changelog topic is co-partitioned with the input: a stream's state is written to the changelog
partition with the number of the input partition its readings came from. On assignment the new owner
reads those changelog partitions (read_committed) into its cold store; a stream that is not resident
is loaded from the cold store when its next reading arrives. The cold store is an SQLite file, so
memory stays flat however many streams a partition holds.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, TopicPartition

from streamer import record_reader
from streamer.config import KafkaSettings
from streamer.errors import StreamerError
from streamer.transport import client_options, common_config

log = logging.getLogger(__name__)


class ColdStore:
    """Latest state snapshot of every known stream that is not (or not only) in the hot store."""

    def __init__(self, directory: str | None = None) -> None:
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix="streamer-cold-", suffix=".sqlite", dir=directory)
        os.close(fd)
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


def restore_partitions(kafka: KafkaSettings, topic: str, partitions: list[int], cold: ColdStore,
                       timeout_s: float = 120.0, progress: Callable[[int], None] | None = None) -> int:
    """Read changelog partitions from the start to their last stable offset into `cold`; return records read."""
    if not partitions:
        return 0
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer = KafkaConsumer(**common_config(kafka), **client_options(kafka, "consumer"), group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed")
    record_reader.install(consumer)
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        todo = {tp for tp in tps if end[tp] > 0}
        deadline = time.monotonic() + timeout_s
        n = 0
        while todo:
            if time.monotonic() > deadline:
                raise StreamerError(f"restoring {topic} partitions {partitions} did not finish in {timeout_s}s")
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                _apply(cold, records)
                n += len(records)
            if progress is not None:
                progress(n)
            todo = {tp for tp in todo if consumer.position(tp) < end[tp]}
        return n
    finally:
        consumer.close()


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
