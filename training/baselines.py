"""No-learning baselines every report compares against: repeat-last-value and seasonal naive."""

from __future__ import annotations

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
