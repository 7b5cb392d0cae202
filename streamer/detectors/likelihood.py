"""HTM-style anomaly likelihood: short-window mean of raw scores against their long-run (EWMA) distribution."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.detectors.base import Detector, ewma_alpha
from streamer.detectors.columns import LikelihoodColumns


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

    def row(self, state: dict[str, Any]) -> list[float]:
        """A state in LikelihoodColumns' flat layout: mean, var, count, window length, the window padded to
        `short` with zeros."""
        recent = [float(v) for v in state["recent"][-self.short:]]
        return [float(state["mean"]), float(state["var"]), float(state["n"]), float(len(recent)), *recent,
                *[0.0] * (self.short - len(recent))]

    def state_of(self, row: list[float]) -> dict[str, Any]:
        """The state of a flat row (`row`'s inverse)."""
        k = int(row[3])
        return {"recent": list(row[4:4 + k]), "mean": row[0], "var": row[1], "n": int(row[2])}

    def columns(self, block: np.ndarray) -> LikelihoodColumns:
        """The likelihood's state as columns (LikelihoodColumns' layout), one row per stream."""
        return LikelihoodColumns(self.short, self.alpha, self.warmup, self.min_std, self.rel_std, block)

    def step(self, state: dict[str, Any], ts: np.ndarray, raw: np.ndarray) -> dict[str, np.ndarray]:
        """{'score' [T] log-likelihood in [0, 1], 'likelihood' [T] in [0, 1]} for raw scores [T]."""
        r = np.asarray(raw, dtype=np.float64).reshape(-1)
        cols = self.columns(np.array([self.row(state)]))
        cols.run(r)
        state.update(self.state_of(cols.block()[0].tolist()))
        score, lik = cols.scores(r.shape[0])
        return {"score": score, "likelihood": lik}
