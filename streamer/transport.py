"""The seam between the run loop and a broker: what the loop polls, commits through and restores from.

`Transport` reaches the cluster and opens `Session`s; a session is one connection's consumer, committer and
changelog restorer. The loop (streamer.service) sees only these interfaces: streamer.kafka.session implements them
on Kafka, streamer.memory_transport in memory (unit tests of the loop's rewinds and rebalances, no broker).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from streamer.cold_store import ColdStore
from streamer.committing import CommitSink
from streamer.liveness import Liveness

Partitions = Callable[[list], None]  # a rebalance callback: the (topic, partition) pairs revoked or assigned


class Restorer(Protocol):
    """Restores the state of newly assigned input partitions into the cold store, in slices between polls."""

    @property
    def restoring(self) -> bool:
        """Some assigned input partition still waits for its state."""

    def assigned(self, tps: list) -> None:
        """Pause these input partitions until their state is restored (called inside a rebalance)."""

    def revoked(self, tps: list) -> None:
        """Give up the restore of these partitions (called inside a rebalance)."""

    def step(self, max_s: float) -> tuple[list[int], int]:
        """Restore for about `max_s` seconds; (partitions resumed, records applied)."""

    def remaining(self) -> dict[int, int]:
        """Records left to read of each partition still restoring."""

    def close(self) -> None:
        """Give up a restore in progress and release the reader."""


class Session(Protocol):
    """One connection to the cluster: its consumer, committer and restorer, closed together."""

    committer: CommitSink
    restorer: Restorer

    def subscribe(self, on_revoked: Partitions, on_assigned: Partitions) -> None:
        """Join the group on the input topics; the callbacks run inside `poll` when partitions move (a failure
        raised by one is raised by that poll)."""

    def poll(self, timeout_ms: int, max_records: int) -> list:
        """The next records in order (each with topic, partition, offset, key, value, timestamp)."""

    def top_up(self, records: list, max_records: int) -> list:
        """`records` with what arrived since they were fetched; a rebalance meanwhile gives them up."""

    def next_offsets(self, records: list) -> dict:
        """The offsets to commit once `records` are processed: one past the last of each partition."""

    def all_paused(self) -> bool:
        """Every assigned partition waits for its restore (a poll would return nothing)."""

    def lags(self) -> dict:
        """Records left to read in each assigned partition whose position and end are known."""

    def fast_paths(self) -> dict[str, bool]:
        """Which fast paths this session's clients use (exported as a gauge; False ones are logged)."""

    def close(self) -> None:
        """Leave the group and close the clients, dropping what was not committed."""


class Transport(Protocol):
    """Reaches a cluster and opens sessions with it; `failures` are the errors that rewind the loop."""

    failures: tuple[type[BaseException], ...]
    backoff_s: tuple[float, float]  # first and longest wait before a new session after a failure

    def connect(self, stop_event: threading.Event, liveness: Liveness) -> int | None:
        """Wait for the cluster and prepare the topics; the forecast topic's partition count, None when stopped
        first."""

    def open_session(self, cold: ColdStore, stop_event: threading.Event) -> Session:
        """A new session whose restores go into `cold`; its waits end early once `stop_event` is set."""

    def partition_for(self, key: bytes, partitions: int) -> int:
        """The partition the cluster's default partitioner picks for a key."""
