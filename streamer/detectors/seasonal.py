"""Seasonal memory: each reading's value one period earlier (a seasonal-naive forecast), from the stream's state."""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector, as_2d

DAY_MS = 86_400_000


class SeasonalMemory(Detector):
    """For each reading at time t, the reading of the same stream nearest to t - `period_ms` (NaN if none).

    A reading counts as "one period earlier" when its time is within half the current sampling interval
    (t minus the previous reading's time) of t - period, so irregular or gappy streams simply get NaN there.
    The state keeps the readings of the last period (times and values, non-finite values as None), at most
    `max_len` of them: a stream sampled faster than period / max_len keeps too short a memory and gets NaN,
    which turns the seasonal view off for it. Used by the pipeline as a second forecaster: a forecast error
    that yesterday's value at the same time explains (a daily job, a daily ramp) is not an anomaly.
    """

    score_range = (-math.inf, math.inf)

    def __init__(self, n_channels: int = 1, period_ms: int = DAY_MS, max_len: int = 1500) -> None:
        self.n_channels, self.period_ms, self.max_len = n_channels, int(period_ms), int(max_len)

    def init_state(self, n_channels: int | None = None) -> dict[str, Any]:
        """Empty memory; no previous reading."""
        return {"ts": [], "x": [], "last": None}

    def step(self, state: dict[str, Any], ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values one period before each reading, float64 [T, C] (NaN where there is none); then remembers them."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        c = x.shape[1] if x.shape[0] else self.n_channels
        x = as_2d(x, c) if x.shape[0] else np.zeros((0, c))
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        out = np.full(x.shape, np.nan)
        mts: list[int] = state["ts"]
        mx: list[list[float | None]] = state["x"]
        last = state["last"]
        for t in range(x.shape[0]):
            now = int(ts[t])
            if last is not None and mts:
                tol = (now - last) / 2.0
                target = now - self.period_ms
                i = bisect.bisect_left(mts, target)
                best, gap = -1, math.inf
                for j in (i - 1, i):
                    if 0 <= j < len(mts) and abs(mts[j] - target) < gap:
                        best, gap = j, abs(mts[j] - target)
                if best >= 0 and gap <= tol:
                    out[t] = [np.nan if v is None else v for v in mx[best]]
            row = x[t]
            mts.append(now)
            mx.append([float(v) if math.isfinite(v) else None for v in row.tolist()])
            last = now
            # later targets lie after now - period: keep the last reading before it and everything since
            drop = max(bisect.bisect_left(mts, now - self.period_ms) - 1, len(mts) - self.max_len)
            if drop > 0:
                del mts[:drop]
                del mx[:drop]
        state["ts"], state["x"], state["last"] = mts, mx, last
        return out
