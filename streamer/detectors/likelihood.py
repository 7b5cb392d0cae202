"""HTM-style anomaly likelihood: short-window mean of raw scores against their long-run (EWMA) distribution."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector, ewma_alpha

_LOG_EPS = math.log(1e-10)


def gaussian_tail(z: float) -> float:
    """Upper tail probability Q(z) of the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def log_tail_score(q: float) -> float:
    """NAB's log-scaled likelihood of an upper-tail probability q: 0 at q = 1, 0.5 at 1e-5, 1 at 1e-10."""
    return min(1.0, max(0.0, math.log(q + 1e-10) / _LOG_EPS)) if q < 1.0 else 0.0


# libm's erfc and log applied elementwise (numpy has no erfc, and its SIMD log may differ in the last bit)
_ERFC = np.frompyfunc(math.erfc, 1, 1)
_LOG = np.frompyfunc(math.log, 1, 1)


def log_tail_scores(z: np.ndarray) -> np.ndarray:
    """`log_tail_score(gaussian_tail(v))` of every v in `z`, bitwise: the same libm calls and IEEE arithmetic,
    without two Python function calls per value (the daemon scores every reading of every stream)."""
    z = np.asarray(z, dtype=np.float64)
    q = 0.5 * _ERFC(z / math.sqrt(2.0)).astype(np.float64)
    s = _LOG(q + 1e-10).astype(np.float64) / _LOG_EPS
    s = np.where(s > 0.0, s, 0.0)  # max(0.0, s) and min(1.0, s) as Python evaluates them, NaN included
    return np.where(q < 1.0, np.where(s < 1.0, s, 1.0), 0.0)


class AnomalyLikelihood(Detector):
    """Likelihood L = 1 - Q((m - mu) / sigma) where m is the mean of the last `short` raw scores and (mu, sigma)
    their long-run distribution, an EWMA of half-life `halflife` readings updated after scoring.

    Output 'score' = log(Q) / log(1e-10) in [0, 1] (NAB's log-scaled likelihood: 0.5 at Q = 1e-5, 1 at 1e-10).
    Warm-up: 0 for the first `warmup` finite readings. Persistent anomalies become the new normal as mu and
    sigma follow them at the stated rate. NaN raw scores give 0 and are skipped.
    """

    score_range = (0.0, 1.0)

    def __init__(self, short: int = 10, halflife: float = 2000.0, warmup: int = 200, min_std: float = 1e-4,
                 rel_std: float = 0.0) -> None:
        self.short, self.alpha, self.warmup = short, ewma_alpha(halflife), warmup
        self.min_std, self.rel_std = min_std, rel_std

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """Empty short window, zero long-run moments."""
        return {"recent": [], "mean": 0.0, "var": 0.0, "n": 0}

    def step(self, state: dict[str, Any], ts: np.ndarray, raw: np.ndarray) -> dict[str, np.ndarray]:
        """{'score' [T] log-likelihood in [0, 1], 'likelihood' [T] in [0, 1]} for raw scores [T]."""
        r = np.asarray(raw, dtype=np.float64).reshape(-1)
        recent: list[float] = list(state["recent"])
        mean, var, n = float(state["mean"]), float(state["var"]), int(state["n"])
        score = np.zeros(r.shape[0])
        lik = np.zeros(r.shape[0])
        for t, s in enumerate(r.tolist()):
            if not math.isfinite(s):
                continue
            recent.append(s)
            if len(recent) > self.short:
                del recent[0]
            m = sum(recent) / len(recent)
            if n >= self.warmup:
                sd = math.sqrt(max(var, 0.0)) + self.min_std + self.rel_std * abs(mean)
                q = gaussian_tail((m - mean) / sd)
                lik[t] = 1.0 - q
                score[t] = log_tail_score(q)
            n += 1
            a = max(self.alpha, 1.0 / n)
            d = m - mean
            mean += a * d
            var = (1.0 - a) * (var + d * a * d)
        state["recent"], state["mean"], state["var"], state["n"] = [float(v) for v in recent], mean, var, n
        return {"score": score, "likelihood": lik}
