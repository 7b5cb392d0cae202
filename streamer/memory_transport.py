"""The run loop's transport in memory: topics, group offsets and transactions in one process, no broker.

Unit tests drive the real loop (streamer.service) through it: a commit applies outputs, changelog records and
offsets together or not at all, a failure can be queued for the next commits or polls, and a rebalance can be asked
for, which runs inside the next poll as Kafka's does. It keeps the contracts of streamer.transport, not Kafka's
timing: records are visible as soon as they are produced or committed.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from streamer.cold_store import ColdStore
from streamer.errors import TransportFailure
from streamer.liveness import Liveness
from streamer.schema import OutRecord
from streamer.transport import Partitions

POLL_IDLE_S = 0.005  # an empty poll waits this long at most, so that the loop does not spin


class Partition(NamedTuple):
    """A topic's partition (the fields of kafka-python's TopicPartition)."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class InRecord:
    """A record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


class InMemoryBroker:
    """Topics of partitions of records, one group's committed offsets, and failures queued on purpose."""

    def __init__(self) -> None:
        self.logs: dict[str, list[list[InRecord]]] = {}
        self.committed: dict[Partition, int] = {}
        self.commit_failures: list[BaseException] = []  # the next commits fail with these, in order
        self.poll_failures: list[BaseException] = []  # the next polls fail with these, in order
        self.commits = 0
        self.rebalance_asked = False
        self.rebalance_at_commit: int | None = None  # ask for a rebalance once this many commits are applied
        self.lock = threading.Lock()

    def create(self, topic: str, partitions: int) -> None:
        """Create a topic (an existing one is kept)."""
        with self.lock:
            self.logs.setdefault(topic, [[] for _ in range(partitions)])

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = 0,
                timestamp: int = 0) -> InRecord:
        """Append one record, visible at once."""
        with self.lock:
            log = self.logs[topic][partition]
            record = InRecord(topic, partition, len(log), key, value, timestamp)
            log.append(record)
            return record

    def records(self, topic: str) -> list[InRecord]:
        """Every record of a topic, partition after partition."""
        with self.lock:
            return [r for log in self.logs.get(topic, []) for r in log]

    def transact(self, records: list[OutRecord], offsets: dict[Partition, int]) -> None:
        """Append `records` and set the group's `offsets` together, or fail with the next queued failure."""
        with self.lock:
            if self.commit_failures:
                raise self.commit_failures.pop(0)
            for r in records:
                log = self.logs[r.topic][r.partition or 0]
                log.append(InRecord(r.topic, r.partition or 0, len(log), r.key, r.value, 0))
            self.committed.update(offsets)
            self.commits += 1
            if self.commits == self.rebalance_at_commit:
                self.rebalance_asked = True

    def rebalance(self) -> None:
        """Revoke every partition and assign them again, inside the next poll."""
        self.rebalance_asked = True


class InMemoryCommitter:
    """Commits a unit at once when started, as a background commit that has finished; `wait` raises its failure."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self.started = False  # a unit was started and not yet waited for
        self.failure: BaseException | None = None  # what that unit failed with
        self.last_seconds = 0.0  # how long the last unit's commit took

    def start(self, records: list[OutRecord], offsets: dict) -> None:
        """Settle the unit before, then commit this one (its failure kept for `wait`)."""
        self.wait()
        self.started = True
        began = time.perf_counter()
        try:
            self.broker.transact(list(records), dict(offsets))
        except TransportFailure as exc:
            self.failure = exc
        self.last_seconds = time.perf_counter() - began

    def wait(self) -> bool:
        """Raise the failure of the unit started last, if it failed; whether there was one to wait for."""
        started, failure = self.started, self.failure
        self.started, self.failure = False, None
        if failure is not None:
            raise failure
        return started

    def idle(self) -> bool:
        """A unit is done as soon as it is started."""
        return True

    def close(self) -> None:
        """Forget the unit started last: the session is ending."""
        self.started, self.failure = False, None


class InMemoryRestorer:
    """Reads the changelog partitions of newly assigned input partitions into the cold store, whole, in one step."""

    def __init__(self, broker: InMemoryBroker, changelog: str, cold: ColdStore, paused: set[Partition]) -> None:
        self.broker, self.changelog, self.cold, self.paused = broker, changelog, cold, paused
        self.waiting: dict[int, list[Partition]] = {}

    @property
    def restoring(self) -> bool:
        """Some assigned input partition still waits for its state."""
        return bool(self.waiting)

    def assigned(self, tps: list) -> None:
        """Pause the assigned partitions until their state is read."""
        for tp in tps:
            self.paused.add(tp)
            self.waiting.setdefault(tp.partition, []).append(tp)

    def revoked(self, tps: list) -> None:
        """Forget the revoked partitions' restores."""
        for tp in tps:
            self.waiting.pop(tp.partition, None)

    def step(self, max_s: float) -> tuple[list[int], int]:
        """Read every waiting partition's changelog (last value per stream wins; None deletes) and resume it."""
        done, n = sorted(self.waiting), 0
        changelog = self.broker.records(self.changelog)
        for p in done:
            latest: dict[str, bytes | None] = {}
            for r in changelog:
                if r.partition == p:
                    latest[r.key.decode()] = r.value
                    n += 1
            self.cold.put_many((s, p, v) for s, v in latest.items() if v is not None)
            self.cold.delete_many(s for s, v in latest.items() if v is None)
            self.paused.difference_update(self.waiting.pop(p))
        return done, n

    def remaining(self) -> dict[int, int]:
        """Partitions still waiting, with 0 records known left (a step reads them whole)."""
        return dict.fromkeys(sorted(self.waiting), 0)

    def close(self) -> None:
        """Give up the restores in progress."""
        self.waiting.clear()


class InMemorySession:
    """One session with the in-memory broker: every partition of the input topics, from the group's offsets."""

    def __init__(self, broker: InMemoryBroker, topics: list[str], changelog: str, cold: ColdStore,
                 stop_event: threading.Event) -> None:
        self.broker, self.topics, self.stop_event = broker, topics, stop_event
        self.committer = InMemoryCommitter(broker)
        self.paused: set[Partition] = set()
        self.restorer = InMemoryRestorer(broker, changelog, cold, self.paused)
        self.positions: dict[Partition, int] = {}  # assigned partition -> next offset to read
        self.callbacks: tuple[Partitions, Partitions] | None = None

    def subscribe(self, on_revoked: Partitions, on_assigned: Partitions) -> None:
        """Join: every input partition is assigned inside the first poll."""
        self.callbacks = (on_revoked, on_assigned)

    def poll(self, timeout_ms: int, max_records: int) -> list:
        """Run a due rebalance (its callbacks' failures raised here), then read the unpaused partitions in turn."""
        if self.broker.poll_failures:
            raise self.broker.poll_failures.pop(0)
        if self.callbacks is not None and (not self.positions or self.broker.rebalance_asked):
            self._rebalance()
        out: list[InRecord] = []
        for tp, position in self.positions.items():
            if tp in self.paused or len(out) >= max_records:
                continue
            got = self.broker.logs[tp.topic][tp.partition][position:position + max_records - len(out)]
            self.positions[tp] = position + len(got)
            out += got
        if not out and timeout_ms > 0:
            self.stop_event.wait(min(timeout_ms / 1000, POLL_IDLE_S))
        return out

    def _rebalance(self) -> None:
        on_revoked, on_assigned = self.callbacks
        self.broker.rebalance_asked = False
        if self.positions:
            held, self.positions = list(self.positions), {}
            on_revoked(held)
        tps = [Partition(t, p) for t in self.topics for p in range(len(self.broker.logs[t]))]
        self.positions = {tp: self.broker.committed.get(tp, 0) for tp in tps}
        on_assigned(tps)

    def top_up(self, records: list, max_records: int) -> list:
        """Nothing arrives between two reads of one thread."""
        return records

    def next_offsets(self, records: list) -> dict:
        """Partition -> one past its last record."""
        out: dict[Partition, int] = {}
        for r in records:
            tp = Partition(r.topic, r.partition)
            out[tp] = max(out.get(tp, 0), r.offset + 1)
        return out

    def all_paused(self) -> bool:
        """Every assigned partition waits for its restore."""
        return set(self.positions) <= self.paused

    def lags(self) -> dict:
        """Records left in each assigned partition."""
        return {tp: len(self.broker.logs[tp.topic][tp.partition]) - pos for tp, pos in self.positions.items()}

    def fast_paths(self) -> dict[str, bool]:
        """No client, no fast path."""
        return {}

    def close(self) -> None:
        """Leave: uncommitted work is dropped, positions forgotten."""
        self.committer.close()
        self.restorer.close()
        self.positions = {}


class InMemoryTransport:
    """The loop's transport over an InMemoryBroker (see streamer.transport.Transport)."""

    failures = (TransportFailure,)
    backoff_s = (0.01, 0.1)  # first and longest wait before a new session after a failure

    def __init__(self, broker: InMemoryBroker, topics: list[str], outputs: list[str], changelog: str,
                 partitions: int = 1) -> None:
        self.broker, self.topics, self.outputs, self.changelog = broker, topics, outputs, changelog
        self.partitions = partitions
        self.sessions = 0

    def connect(self, stop_event: threading.Event, liveness: Liveness) -> int | None:
        """Create the topics (inputs, outputs and changelog with the same partition count)."""
        for topic in [*self.topics, *self.outputs, self.changelog]:
            self.broker.create(topic, self.partitions)
        return self.partitions

    def open_session(self, cold: ColdStore, stop_event: threading.Event) -> InMemorySession:
        """A new session from the group's committed offsets."""
        self.sessions += 1
        return InMemorySession(self.broker, self.topics, self.changelog, cold, stop_event)

    def partition_for(self, key: bytes, partitions: int) -> int:
        """A stable hash of the key (not Kafka's murmur2: nothing here is shared with Kafka clients)."""
        return zlib.crc32(key) % partitions
