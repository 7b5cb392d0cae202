"""Shared pieces of the detectors: the Detector base, EWMA updates, and the plain-data check for state."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class Detector:
    """Base of per-stream detectors: configuration on the object, per-stream state in a plain dict."""

    #: closed range of the numeric scores `step` returns (documented per detector; checked by the tests)
    score_range: tuple[float, float] = (0.0, math.inf)

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """Fresh per-stream state (plain JSON-able data, see `check_plain`)."""
        raise NotImplementedError


def ewma_alpha(halflife: float) -> float:
    """Adaptation rate alpha of an EWMA whose weights halve every `halflife` readings."""
    return 1.0 - 0.5 ** (1.0 / max(halflife, 1e-9))


def floats(a: np.ndarray) -> list[float]:
    """A float array as a list of Python floats (JSON-able)."""
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def check_plain(obj: Any, path: str = "state") -> None:
    """Raise TypeError unless obj is plain JSON-able data (dict with str keys, list, str, bytes, int, float, bool,
    None); bytes are written to snapshots as base64 strings."""
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        if isinstance(obj, np.generic):
            raise TypeError(f"{path} is a numpy scalar {type(obj).__name__}; use a Python number")
        return
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            check_plain(v, f"{path}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} has a non-string key {k!r}")
            check_plain(v, f"{path}.{k}")
        return
    raise TypeError(f"{path} is a {type(obj).__name__}, not plain JSON-able data")


def as_2d(x: np.ndarray, n_channels: int) -> np.ndarray:
    """Readings as float64 [T, C]; a 1-D array is one channel."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != n_channels:
        raise ValueError(f"expected readings [T, {n_channels}], got {a.shape}")
    return a
