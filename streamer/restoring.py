"""State follows partitions: the assigned partitions' streams are restored from the changelog a slice at a time,
between polls (never inside a rebalance callback, which would stall the group's heartbeats); the instance is
ready once every assigned partition is restored."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from streamer.config import Settings
from streamer.liveness import Liveness, LoopStats
from streamer.metrics import Metrics
from streamer.transport import Restorer

log = logging.getLogger(__name__)


class Restoration:
    """The restore of one session's assigned partitions: progress, gauges, /readyz's reason and readiness."""

    def __init__(self, settings: Settings, metrics: Metrics, liveness: Liveness, stats: LoopStats,
                 set_ready: Callable[[bool], None]) -> None:
        self.settings, self.metrics, self.liveness, self.stats = settings, metrics, liveness, stats
        self.set_ready = set_ready
        self.restorer: Restorer | None = None  # none outside a session with the cluster
        self.records = 0  # changelog records read since the last assignment
        self.began = 0.0
        self.partitions: list[int] = []

    def open(self, restorer: Restorer) -> None:
        """A session began: restore through its restorer."""
        self.restorer = restorer

    def close(self) -> None:
        """The session ended (its restorer is closed with it)."""
        self.restorer = None

    @property
    def restoring(self) -> bool:
        """Whether some assigned partition still waits for its state."""
        return self.restorer is not None and self.restorer.restoring

    def poll_wait_ms(self, all_paused: bool) -> int:
        """The poll's longest wait: none while every assigned partition waits for its restore (which is the work
        to do), else the configured one."""
        if self.restoring and all_paused:
            return 0
        return self.settings.engine.max_wait_ms

    def assigned(self, assigned) -> None:
        """Pause the assigned partitions until their state is restored."""
        if self.restorer is not None:
            self.restorer.assigned(assigned)
        self.began, self.records = time.monotonic(), 0
        self.partitions = sorted({tp.partition for tp in assigned})
        self.liveness.reason = (f"restoring the state of partitions {self.partitions}"
                                if assigned else "no input partitions assigned")

    def revoked(self, revoked) -> None:
        """Stop restoring the revoked partitions."""
        if self.restorer is not None:
            self.restorer.revoked(revoked)

    def step(self) -> None:
        """Restore state for one slice of time; resume the partitions it completed; ready once all are."""
        assert self.restorer is not None
        done, n = self.restorer.step(self.settings.engine.restore_slice_ms / 1000)
        if n:
            self.stats.restored_records += n
            self.metrics.restored.inc(n)
            self.records += n
            self.liveness.progressed()
        left = self.restorer.remaining()
        for p, records in left.items():
            self.metrics.restore_remaining.labels(str(p)).set(records)
        for p in done:
            self.metrics.restore_remaining.labels(str(p)).set(0)
        if left:
            self.liveness.reason = (f"restoring the state of partitions {sorted(left)}: {sum(left.values())} "
                                    f"changelog records left, {self.records} read")
            return
        log.info("restored state", extra={"partitions": self.partitions, "records": self.records,
                                          "seconds": round(time.monotonic() - self.began, 3)})
        self.liveness.reason = "all partitions restored"
        self.set_ready(True)
