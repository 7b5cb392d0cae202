"""Online per-stream, per-channel normalisation of readings before the model (EWMA mean and variance)."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.detectors.base import Detector, as_2d, ewma_alpha
from streamer.detectors.columns import EwmaColumns


class OnlineNormaliser(Detector):
    """z = (x - mean) / std with stats of the readings *before* x, at an EWMA half-life of `halflife` readings.

    Warm-up: the first readings use plain running moments (rate 1/n), so the stats are sensible from the
    second reading on; outputs are clipped to [-clip, clip]. A NaN reading gives NaN-free output 0 (the mean)
    and does not update the stats. A constant stream gives 0 (std floored at `min_std`).
    """

    def __init__(self, n_channels: int = 1, halflife: float = 5000.0, clip: float = 10.0,
                 min_std: float = 1e-6, rel_std: float = 1e-3) -> None:
        self.n_channels, self.alpha, self.clip = n_channels, ewma_alpha(halflife), clip
        self.min_std, self.rel_std = min_std, rel_std
        self.score_range = (-clip, clip)

    def init_state(self, n_channels: int | None = None) -> dict[str, Any]:
        """Zero moments."""
        c = n_channels or self.n_channels
        return {"mean": [0.0] * c, "var": [0.0] * c, "n": [0] * c}

    def _std(self, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(var, 0.0)) + self.min_std + self.rel_std * np.abs(mean)

    def step(self, state: dict[str, Any], ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Normalised readings float32 [T, C]; the stats then include these readings."""
        x = as_2d(values, len(state["mean"]))
        return self.step_streams([state], np.array([0, x.shape[0]]), x)

    def step_streams(self, states: list[dict[str, Any]], offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
        """`step` for many streams at once: readings [N, C] laid out by `offsets`, stream i's state states[i]."""
        x = as_2d(values, len(states[0]["mean"])) if states else np.zeros((0, self.n_channels))
        cols = EwmaColumns(self.alpha, 1, -self.clip, self.clip, self.min_std, self.rel_std,
                           [st["mean"] for st in states], [st["var"] for st in states], [st["n"] for st in states])
        out = cols.run(offsets, x).astype(np.float32)
        for i, st in enumerate(states):
            st["mean"], st["var"], st["n"] = cols.mean[i].tolist(), cols.var[i].tolist(), cols.n[i].tolist()
        return out

    def denormalise(self, state: dict[str, Any], z: np.ndarray) -> np.ndarray:
        """Back to the input's units with the current stats (forecasts for the user)."""
        mean, var = np.array(state["mean"]), np.array(state["var"])
        return np.asarray(z, dtype=np.float64) * self._std(mean, var) + mean
