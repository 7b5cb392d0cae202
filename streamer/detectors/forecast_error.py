"""Forecast-error anomaly scores (Telemanom's approach): |actual - predicted| per channel, normalised per stream."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.detectors.base import Detector, as_2d, ewma_alpha
from streamer.detectors.columns import EwmaColumns


class ForecastErrorScorer(Detector):
    """Per channel z = (e - mean_e) / std_e of the absolute one-step error e, with EWMA stats of past errors only.

    Adaptation: the error mean and variance follow an EWMA of half-life `halflife` readings, so a persisting new
    level of error becomes the new normal. Warm-up: z is 0 until `warmup` errors were seen. The combined score
    is the root mean square of the positive channel z; both are clipped to [0, zmax]. A NaN reading or
    forecast gives score 0 and leaves the stats alone. `forecast[t]` is the prediction made at t for t+1.
    `alternative` (optional, [T, C]) is a second prediction *of* row t (e.g. the value one period earlier,
    NaN where there is none); the error is then the smaller of the two (what either forecaster explains).
    """

    def __init__(self, n_channels: int = 1, halflife: float = 2000.0, warmup: int = 50, zmax: float = 50.0,
                 min_std: float = 1e-6) -> None:
        self.n_channels, self.alpha, self.warmup, self.zmax = n_channels, ewma_alpha(halflife), warmup, zmax
        self.min_std = min_std
        self.score_range = (0.0, zmax)

    def init_state(self, n_channels: int | None = None) -> dict[str, Any]:
        """No forecast yet; zero error moments."""
        c = n_channels or self.n_channels
        return {"pred": None, "mean": [0.0] * c, "var": [0.0] * c, "n": [0] * c}

    def columns(self, state: dict[str, Any] | None = None, mean: np.ndarray | None = None,
                var: np.ndarray | None = None, n: np.ndarray | None = None) -> EwmaColumns:
        """The error moments as columns: of one stream's state, or of many streams' arrays [S, C]."""
        if state is not None:
            mean, var, n = [state["mean"]], [state["var"]], [state["n"]]
        return EwmaColumns(self.alpha, self.warmup, 0.0, self.zmax, self.min_std, 0.0, mean, var, n)

    def step(self, state: dict[str, Any], ts: np.ndarray, values: np.ndarray,
             forecast: np.ndarray, alternative: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """{'score' [T], 'channels' [T, C] (positive z), 'error' [T, C] (absolute error, NaN when none)}."""
        c = len(state["mean"])
        x, f = as_2d(values, c), as_2d(forecast, c)
        T = x.shape[0]
        z = np.zeros((T, c))
        err = np.full((T, c), np.nan)
        if T == 0:
            return {"score": np.zeros(0), "channels": z, "error": err}
        prev = np.full((1, c), np.nan) if state["pred"] is None else np.array(
            [[np.nan if v is None else v for v in state["pred"]]])
        pred = np.concatenate([prev, f[:-1]])  # the forecast for row t was made at row t-1
        with np.errstate(invalid="ignore"):
            err = np.abs(x - pred)
            if alternative is not None:
                err = np.fmin(err, np.abs(x - as_2d(alternative, c)))  # NaN alternative: the forecast's error
        cols = self.columns(state)
        z = cols.run(np.array([0, T]), err)
        state["mean"], state["var"], state["n"] = cols.mean[0].tolist(), cols.var[0].tolist(), cols.n[0].tolist()
        state["pred"] = [float(v) if np.isfinite(v) else None for v in f[-1]]
        score = np.sqrt(np.mean(z**2, axis=1))
        return {"score": score, "channels": z, "error": err}
