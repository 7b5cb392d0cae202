"""Where stream state lives outside the hot store: a local cold store, filled by evictions and by restores.

A stream that is not resident is loaded from the cold store when its next reading arrives; a restore
(streamer.kafka.changelog) reads the changelog partitions of newly assigned input partitions into it. The cold
store is an SQLite file, so memory stays flat however many streams a partition holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable

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
