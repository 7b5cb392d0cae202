"""What a settled or failed commit changes besides the topics: the metrics, the loop's counters, and the count of
commits failing in a row that /healthz reads."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from streamer.config import MetricsSettings
from streamer.liveness import Liveness, LoopStats
from streamer.metrics import Metrics

if TYPE_CHECKING:
    from streamer.processor import Pending
    from streamer.state import StateStore

log = logging.getLogger(__name__)


class CommitAccounting:
    """Counts each commit's outcome once it settles."""

    def __init__(self, settings: MetricsSettings, metrics: Metrics, liveness: Liveness, stats: LoopStats) -> None:
        self.settings, self.metrics, self.liveness, self.stats = settings, metrics, liveness, stats
        self.evictions_seen = 0  # the store's eviction count at the last commit (reset with a new store)

    def committed(self, p: Pending, n_state: int, seconds: float, store: StateStore, firing: int) -> None:
        """A commit settled: what it published, the store's size and evictions, the alerts firing."""
        self.liveness.failed_commits_in_row = 0
        self.metrics.committed(p, n_state, seconds)
        evictions = store.evictions
        self.metrics.evictions.inc(evictions - self.evictions_seen)
        self.evictions_seen = evictions
        self.metrics.active_streams.set(len(store))
        self.metrics.alerts_firing.set(firing)
        self.stats.committed(p.readings, sum(p.kinds.values()), sum(p.reasons.values()), seconds)

    def failed(self, exc: BaseException) -> None:
        """Count a failed commit; past the configured number in a row the instance reports itself unhealthy."""
        self.liveness.failed_commits_in_row += 1
        n = self.liveness.failed_commits_in_row
        self.metrics.commit_failures.inc()
        self.metrics.failed_commits_in_row.set(n)
        if n == self.settings.unhealthy_after_failed_commits:
            log.error("commits keep failing on the same work: /healthz reports unhealthy until one succeeds", extra={
                "failed_commits_in_row": n, "error": repr(exc),
                "setting": "STREAMER_METRICS__UNHEALTHY_AFTER_FAILED_COMMITS"})
