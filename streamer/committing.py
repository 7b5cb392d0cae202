"""The commit order: each commit hands its outputs, the changed streams' states and the input offsets to a sink as one
unit, with at most one unit in flight; a unit is accounted for (or its failure counted) once it has settled.

`Commits` holds that order whatever the sink: `streamer.kafka.committer.Committer` (one Kafka transaction per unit with
exactly-once) in the daemon, `InMemorySink` in unit tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from streamer.processor import Pending
from streamer.schema import OutRecord


class CommitSink(Protocol):
    """What the loop commits through: `Committer` on Kafka, `InMemorySink` without a broker."""

    last_seconds: float  # how long the unit last waited for took to commit (not the time it sat done after)

    def start(self, records: list[OutRecord], offsets: dict) -> None:
        """Begin committing the records and offsets atomically, in the background."""

    def wait(self) -> bool:
        """Wait for the commit in flight (raising its failure); whether there was one."""

    def idle(self) -> bool:
        """Whether no commit is in flight."""

    def close(self) -> None:
        """Finish the commit in flight and release the clients."""


def state_records(topic: str, changed: dict[str, int], store, cold) -> list[OutRecord]:
    """The changelog records of the changed streams (stream -> input partition): their latest snapshots, from the
    state store, or from the cold store for one evicted since it changed."""
    resident = [s for s in changed if s in store]
    state = [OutRecord(topic, s.encode(), blob, changed[s])
             for s, blob in zip(resident, store.snapshot_each(resident), strict=True)]
    for s in changed:
        if s not in store:
            found = cold.get(s)
            if found is not None:
                state.append(OutRecord(topic, s.encode(), found[1], changed[s]))
    return state


class InMemorySink:
    """A sink that keeps what was committed, in order; `fail_next` makes the next unit fail when it settles."""

    def __init__(self) -> None:
        self.committed: list[tuple[list[OutRecord], dict]] = []
        self.calls: list[str] = []  # "start", "wait", "close", in order
        self.fail_next: BaseException | None = None
        self.last_seconds = 0.0  # units commit when waited for, at once
        self._inflight: tuple[list[OutRecord], dict] | None = None

    def start(self, records: list[OutRecord], offsets: dict) -> None:
        """Take a unit; a second one while one is in flight breaks the commit order."""
        if self._inflight is not None:
            raise AssertionError("a commit started while another was in flight")
        self.calls.append("start")
        self._inflight = (list(records), dict(offsets))

    def wait(self) -> bool:
        """Settle the unit in flight: committed, or failed (then it is gone, as an aborted transaction)."""
        self.calls.append("wait")
        unit, self._inflight = self._inflight, None
        if unit is None:
            return False
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        self.committed.append(unit)
        return True

    def idle(self) -> bool:
        """Units settle when waited for, so one in flight is never idle."""
        return self._inflight is None

    def close(self) -> None:
        """Settle what is in flight."""
        self.calls.append("close")
        if self._inflight is not None:
            self.wait()


class Commits:
    """One unit in flight at a time; `settled(work, states, seconds)` and `failed(exc)` report how each one ended."""

    def __init__(self, settled: Callable[[Pending, int, float], None], failed: Callable[[BaseException], None]) -> None:
        self.settled, self.failed = settled, failed
        self.sink: CommitSink | None = None
        self._inflight: tuple[Pending, int, float] | None = None  # the unit running: work, state records, start

    @property
    def in_flight(self) -> bool:
        """Whether a unit was started and has not settled."""
        return self._inflight is not None

    def start(self, work: Pending, state: list[OutRecord]) -> None:
        """Settle the unit in flight, then hand the sink this one: outputs, then states, with the offsets."""
        assert self.sink is not None
        self.settle()
        self.sink.start(work.records + state, work.offsets)
        self._inflight = (work, len(state))

    def settle(self) -> None:
        """Wait for the unit in flight (raising its failure, after counting it) and account for it."""
        if self._inflight is None or self.sink is None:
            return
        work, n_state = self._inflight
        self._inflight = None
        try:
            self.sink.wait()
        except Exception as exc:
            self.failed(exc)
            raise
        # the commit's own duration as the sink measured it, not the time since the hand-over: a unit done while
        # the loop polled or processed is only noticed after that
        self.settled(work, n_state, self.sink.last_seconds)

    def settle_if_done(self) -> None:
        """Account for a unit that finished, without waiting for one that has not."""
        if self._inflight is not None and self.sink is not None and self.sink.idle():
            self.settle()

    def abandon(self) -> None:
        """Forget the unit in flight (a rewind: the next session replays its work from the last commit)."""
        self._inflight = None

    def close(self) -> None:
        """Close the sink (it finishes its unit in flight); no sink until the next session's."""
        if self.sink is not None:
            self.sink.close()
        self.sink = None
        self._inflight = None
