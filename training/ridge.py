"""The delay line's linear forecast map fitted in closed form: ridge regression, the ridge chosen on validation rows.

The delay-line model (training/delay.py) forecasts x_{t+h} = x_t + sum_k A[h, k] (x_{t-k} - x_t) from the last L
readings held in its state (NLinear, one A [H, L] shared by every channel). That map is linear in A, so instead
of gradient steps it can be solved exactly: least squares over every training window and channel, with a ridge
penalty lambda |A|^2. Each lambda of a declared grid is solved on the training windows and scored by the MSE of
its forecasts on the validation windows; the best one is kept. The test rows are never read.

Only windows whose delay line is full (t >= L - 1) are used: the served model's earlier forecasts see zeros for
the missing lags. The normal equations are accumulated in blocks of windows, so memory stays at O(L^2 + block L).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.errors import ConfigError
from training.evaluate import forecast_origins, forecast_targets

BLOCK = 512  # windows per block of the normal equations


@dataclass
class RidgeFit:
    """The chosen map A [H, L] (lag 0 first; column 0 is 0), its ridge and each ridge's validation MSE."""

    A: np.ndarray
    ridge: float
    val_mse: dict[float, float] = field(default_factory=dict)
    train_windows: int = 0
    val_windows: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (without A, which the checkpoint holds)."""
        return {"ridge": self.ridge, "val_mse_by_ridge": {str(k): v for k, v in self.val_mse.items()},
                "train_windows": self.train_windows, "val_windows": self.val_windows,
                "seconds": round(self.seconds, 2)}


def window_origins(lo: int, hi: int, context: int, horizon: int) -> np.ndarray:
    """Origins t of the protocol's windows scored in rows [lo, hi) whose delay line of `context` readings is full."""
    origins = forecast_origins(lo, hi, horizon)
    return origins[origins >= context - 1]


def _block(x: np.ndarray, origins: np.ndarray, context: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [N*F, L-1] (x_{t-k} - x_t, k = 1..L-1) and targets [N*F, H] (x_{t+h} - x_t) of some windows."""
    lags = origins[:, None] - np.arange(1, context)[None, :]
    last = x[origins][:, None, :]  # [N, 1, F]
    feats = (x[lags] - last).transpose(0, 2, 1).reshape(-1, context - 1)
    targets = (forecast_targets(x, origins, horizon) - last).transpose(0, 2, 1).reshape(-1, horizon)
    return feats, targets


def _normal_equations(x: np.ndarray, origins: np.ndarray, context: int,
                      horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(F^T F, F^T Y) over the windows at `origins`, accumulated block by block."""
    gram = np.zeros((context - 1, context - 1))
    cross = np.zeros((context - 1, horizon))
    for a in range(0, len(origins), BLOCK):
        feats, targets = _block(x, origins[a:a + BLOCK], context, horizon)
        gram += feats.T @ feats
        cross += feats.T @ targets
    return gram, cross


def closed_form_mse(x: np.ndarray, origins: np.ndarray, context: int, horizon: int, coef: np.ndarray) -> float:
    """Mean squared forecast error of the map `coef` [L-1, H] over the windows, steps and channels."""
    total, count = 0.0, 0
    for a in range(0, len(origins), BLOCK):
        feats, targets = _block(x, origins[a:a + BLOCK], context, horizon)
        total += float(np.square(feats @ coef - targets).sum())
        count += targets.size
    return total / count


def fit_nlinear(x: np.ndarray, train: tuple[int, int], val: tuple[int, int], context: int, horizon: int,
                ridges: Sequence[float]) -> RidgeFit:
    """NLinear's A for normalised readings x [T, F]: solved on the train rows' windows, the ridge picked on val's."""
    if context < 2:
        raise ConfigError(f"a closed-form delay map needs model.context >= 2, got {context}")
    if not ridges or any(r < 0 for r in ridges):
        raise ConfigError(f"train.ridge must list penalties >= 0, got {list(ridges)}")
    started = time.monotonic()
    x = np.asarray(x, dtype=np.float64)
    fit_at = window_origins(*train, context, horizon)
    score_at = window_origins(*val, context, horizon)
    if len(fit_at) < context or not len(score_at):
        raise ConfigError(f"too few windows for a closed-form fit with context {context}: {len(fit_at)} training, "
                          f"{len(score_at)} validation")
    gram, cross = _normal_equations(x, fit_at, context, horizon)
    eye = np.eye(context - 1)
    best: tuple[float, float, np.ndarray] | None = None
    scores: dict[float, float] = {}
    for ridge in ridges:
        coef = np.linalg.lstsq(gram + float(ridge) * eye, cross, rcond=None)[0]
        scores[float(ridge)] = mse = closed_form_mse(x, score_at, context, horizon, coef)
        if best is None or mse < best[0]:  # ties: the earlier (listed first) ridge
            best = (mse, float(ridge), coef)
    assert best is not None
    A = np.zeros((horizon, context))
    A[:, 1:] = best[2].T
    return RidgeFit(A, best[1], scores, len(fit_at), len(score_at), time.monotonic() - started)
