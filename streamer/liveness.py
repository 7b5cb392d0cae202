"""What the run loop reports about itself: its counters (LoopStats, for logs and tests) and its health (Liveness:
heartbeat, progress, failing commits and why it is not ready, read by /healthz and /readyz). The loop and its
helpers (connecting, restoring, committing) write them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from streamer.config import MetricsSettings


@dataclass
class LoopStats:
    """Counters of what the loop has done, for logs and tests."""

    polls: int = 0
    readings: int = 0
    outputs: int = 0
    dead_letters: int = 0
    commits: int = 0
    restored_records: int = 0
    cold_loads: int = 0
    rewinds: int = 0
    reloads: int = 0
    # the time line of the loop, seconds summed: in polls (waiting for fetches, and the client decoding what
    # they returned, which competes with the committer's thread for the interpreter), processing, handing each
    # commit's records to the committer (their snapshots; waiting for the commit before it), and the commits
    # themselves (transactions, on the committer's thread)
    poll_s: float = 0.0
    process_s: float = 0.0
    handover_s: float = 0.0
    transaction_s: float = 0.0

    def committed(self, readings: int, outputs: int, dead_letters: int, seconds: float) -> None:
        """A unit of work committed (in `seconds`)."""
        self.commits += 1
        self.readings += readings
        self.outputs += outputs
        self.dead_letters += dead_letters
        self.transaction_s += seconds

    def timeline(self) -> dict[str, float]:
        """The time line per poll and per commit, in ms (for the stop log and benchmarks)."""
        polls, commits = max(self.polls, 1), max(self.commits, 1)
        return {"poll_wait_ms_per_poll": round(1000 * self.poll_s / polls, 3),
                "process_ms_per_poll": round(1000 * self.process_s / polls, 3),
                "handover_ms_per_commit": round(1000 * self.handover_s / commits, 3),
                "transaction_ms_per_commit": round(1000 * self.transaction_s / commits, 3)}


@dataclass
class Liveness:
    """The loop's health: when it last turned, when it last made progress, commits failed in a row, and why
    /readyz says not ready."""

    heartbeat: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)  # work done, or none to do
    failed_commits_in_row: int = 0
    reason: str = "starting"

    def beat(self, progress: bool = False) -> float:
        """The loop turned (and, with `progress`, did work or had none to do); returns the time."""
        self.heartbeat = now = time.monotonic()
        if progress:
            self.last_progress = now
        return now

    def progressed(self) -> None:
        """Work was done (a restore slice, a batch), or there was none to do."""
        self.last_progress = time.monotonic()

    def alive(self, m: MetricsSettings) -> bool:
        """/healthz: the loop turned recently, made progress when there was work, and its commits are not failing
        over and over."""
        now = time.monotonic()
        return (now - self.heartbeat < m.liveness_timeout_s and now - self.last_progress < m.stall_timeout_s
                and self.failed_commits_in_row < m.unhealthy_after_failed_commits)
