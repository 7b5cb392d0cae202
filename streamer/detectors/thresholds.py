"""Telemanom's nonparametric dynamic threshold on EWMA-smoothed errors over a trailing window (Hundman et al. 2018)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector


def telemanom_epsilon(e_s: np.ndarray, z_values: np.ndarray, max_seqs: int = 5) -> float:
    """Threshold mu + z sigma maximising (dmu/mu + dsigma/sigma) / (|E_a| + |E_seq|^2) over z (Telemanom eq. 2)."""
    mu, sd = float(e_s.mean()), float(e_s.std())
    best, eps = -math.inf, mu + float(z_values[-1]) * sd
    if sd <= 0.0 or mu <= 0.0:
        return eps
    for z in z_values.tolist():
        e = mu + z * sd
        above = e_s >= e
        n_above = int(above.sum())
        if n_above == 0 or n_above >= 0.5 * e_s.size:
            continue
        below = e_s[~above]
        n_seq = int(np.count_nonzero(np.diff(np.r_[0, above.astype(np.int8)]) == 1))
        if n_seq > max_seqs:
            continue
        score = ((mu - below.mean()) / mu + (sd - below.std()) / sd) / (n_above + n_seq**2)
        if score >= best:
            best, eps = score, e
    return eps


class DynamicThreshold(Detector):
    """Smoothed error e_s = EWMA(error, span `span`); threshold epsilon from the last `window` values of e_s,
    recomputed every `every` readings (Telemanom's batches) once `warmup` values are in.

    Outputs per reading: 'ratio' = e_s / epsilon (>= 0; above 1 is anomalous), 'flag' (ratio > 1) and
    'threshold' (epsilon, NaN during warm-up). The window keeps adapting, so a lasting new error level
    raises mu and sigma and stops being flagged. NaN errors give ratio 0 and are skipped.
    """

    score_range = (0.0, math.inf)

    def __init__(self, window: int = 1000, span: float = 30.0, every: int = 50, warmup: int = 200,
                 z_min: float = 2.5, z_max: float = 12.0, z_step: float = 0.5) -> None:
        self.window, self.every, self.warmup = window, every, warmup
        self.alpha = 2.0 / (span + 1.0)  # pandas ewm(span=...) as Telemanom uses
        self.z_values = np.arange(z_min, z_max, z_step)

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """No smoothed errors yet, no threshold."""
        return {"es": None, "buf": [], "eps": None, "since": 0}

    def step(self, state: dict[str, Any], ts: np.ndarray, error: np.ndarray) -> dict[str, np.ndarray]:
        """{'ratio' [T], 'flag' [T] bool, 'threshold' [T]} for non-negative errors [T]."""
        err = np.asarray(error, dtype=np.float64).reshape(-1)
        es, eps, since = state["es"], state["eps"], int(state["since"])
        buf: list[float] = list(state["buf"])
        T = err.shape[0]
        ratio, thr = np.zeros(T), np.full(T, np.nan)
        for t, e in enumerate(err.tolist()):
            if not math.isfinite(e):
                continue
            es = e if es is None else self.alpha * e + (1.0 - self.alpha) * es
            buf.append(es)
            if len(buf) > self.window:
                del buf[0]
            since += 1
            if len(buf) >= self.warmup and (eps is None or since >= self.every):
                eps, since = telemanom_epsilon(np.asarray(buf), self.z_values), 0
            if eps is not None:
                thr[t] = eps
                ratio[t] = es / eps if eps > 0 else (math.inf if es > 0 else 0.0)
        ratio = np.minimum(ratio, 1e6)
        state["es"], state["eps"], state["since"], state["buf"] = es, eps, since, buf
        return {"ratio": ratio, "flag": ratio > 1.0, "threshold": thr}
