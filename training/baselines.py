"""Baselines every report compares against: repeat-last-value and seasonal naive for forecasts; for events the
label seen a step earlier and a memoryless per-reading classifier (LDA) fitted on the model's own training rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training.evaluate import forecast_metrics, forecast_targets


def repeat_last(x: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """[N, horizon, F]: the reading at each origin, repeated."""
    return np.repeat(x[origins][:, None, :], horizon, axis=1)


def seasonal_naive(x: np.ndarray, origins: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """[N, horizon, F]: step h repeats the reading one (or more) whole periods before t+1+h, at or before t."""
    h = np.arange(horizon)
    back = period * ((h + period) // period)  # smallest multiple of period >= h + 1
    idx = origins[:, None] + 1 + h[None, :] - back[None, :]
    if (idx < 0).any():
        raise ValueError(f"seasonal naive needs {period} readings of history before the first origin")
    return x[idx]


def forecast_baselines(x: np.ndarray, origins: np.ndarray, horizon: int, period: int | None) -> dict[str, float]:
    """repeat_mse/mae and (with a period) seasonal_mse/mae on the same windows as the model."""
    target = forecast_targets(x, origins, horizon)
    out = {f"repeat_{k}": v for k, v in forecast_metrics(repeat_last(x, origins, horizon), target).items()}
    if period:
        sn = forecast_metrics(seasonal_naive(x, origins, horizon, period), target)
        out.update({f"seasonal_{k}": v for k, v in sn.items()})
    return out


def event_baseline(labels: np.ndarray, lag: int = 1) -> float:
    """Accuracy of predicting the label seen `lag` steps earlier (repeat-last for events; needs delayed labels)."""
    lab = labels >= 0.5
    return float((lab[lag:] == lab[:-lag]).mean())


def beat_ratio(baseline: float, model: float) -> float:
    """How many times smaller the model's error is than the baseline's (>1: the model wins)."""
    return float(baseline / model) if model > 0 else float("inf")


@dataclass(frozen=True)
class LinearDiscriminant:
    """Fisher's linear discriminant with a pooled covariance: P(event) from the current reading alone.

    The memoryless baseline of an event model: the method the occupancy paper reports (97.90% on datatest.txt),
    on the same inputs and training rows as the model, so the report shows what the recurrent state adds.
    `logit` is the posterior log-odds under Gaussian classes with a shared covariance and the fitted class
    frequencies as priors (threshold 0 is P = 0.5).
    """

    weights: np.ndarray  # [F]
    bias: float

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, ridge: float = 1e-6) -> LinearDiscriminant | None:
        """Fit on readings [N, F] and 0/1 labels [N]; None when a class is absent (nothing to discriminate)."""
        x = np.asarray(x, dtype=np.float64)
        pos = np.asarray(labels) >= 0.5
        n1, n0 = int(pos.sum()), int((~pos).sum())
        if n1 < 2 or n0 < 2:
            return None
        m1, m0 = x[pos].mean(axis=0), x[~pos].mean(axis=0)
        centred = np.concatenate([x[pos] - m1, x[~pos] - m0])
        cov = centred.T @ centred / (n1 + n0 - 2)
        # a channel constant in the training rows (a weekday flag, a stuck sensor) leaves cov singular
        cov += ridge * max(float(np.trace(cov)) / cov.shape[0], 1e-12) * np.eye(cov.shape[0])
        w = np.linalg.solve(cov, m1 - m0)
        return cls(w, float(-0.5 * (m1 + m0) @ w + np.log(n1 / n0)))

    def logit(self, x: np.ndarray) -> np.ndarray:
        """Log-odds of the event for readings [N, F] (the same scaling as the fit)."""
        return np.asarray(x, dtype=np.float64) @ self.weights + self.bias

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form stored in checkpoints."""
        return {"method": "lda", "weights": [float(v) for v in self.weights], "bias": self.bias}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearDiscriminant:
        """Inverse of to_dict."""
        return cls(np.asarray(d["weights"], dtype=np.float64), float(d["bias"]))


def error_overlap(labels: np.ndarray, model: np.ndarray, baseline: np.ndarray) -> dict[str, int]:
    """Wrong steps of a model and a baseline (0/1 decisions): each one's count, both, and either alone."""
    lab = np.asarray(labels) >= 0.5
    wm, wb = (np.asarray(model) >= 0.5) != lab, (np.asarray(baseline) >= 0.5) != lab
    return {"model_errors": int(wm.sum()), "baseline_errors": int(wb.sum()), "shared_errors": int((wm & wb).sum()),
            "model_only_errors": int((wm & ~wb).sum()), "baseline_only_errors": int((wb & ~wm).sum())}
