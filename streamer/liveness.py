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

    def committed(self, readings: int, outputs: int, dead_letters: int) -> None:
        """A unit of work committed."""
        self.commits += 1
        self.readings += readings
        self.outputs += outputs
        self.dead_letters += dead_letters


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
