"""Alert lifecycle: an anomaly alert fires once, updates while it lasts, and resolves; deterministic ids."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector


class AlertLifecycle(Detector):
    """Turns per-reading scores into alert messages: state 'firing' (once, at onset), 'updated', 'resolved'.

    An alert opens at the first reading with score >= `on`, updates every `update_every` readings while open
    or when its severity rises, and resolves after `resolve_after` consecutive readings below `off` (hysteresis),
    or after `max_open` readings (a persisting condition is the new normal; the adaptive scores agree).
    Id: f"{stream}:{kind}:{start_ts}". Severity: 'critical' when the peak score >= `critical`, else 'warning'.
    `channels` lists the `top_k` channel indices (or names) with the largest contribution at the peak.
    NaN scores count as below `off`.
    """

    score_range = (0.0, math.inf)

    def __init__(self, kind: str = "anomaly", on: float = 1.0, off: float | None = None, resolve_after: int = 10,
                 update_every: int = 60, critical: float = 2.0, top_k: int = 3, max_open: int = 10_000,
                 channel_names: list[str] | None = None, model: str = "", version: str = "") -> None:
        self.kind, self.on, self.off = kind, on, on if off is None else off
        self.resolve_after, self.update_every, self.critical = resolve_after, update_every, critical
        self.top_k, self.max_open, self.channel_names = top_k, max_open, channel_names
        self.model, self.version = model, version

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """No open alert."""
        return {"open": None}

    def _severity(self, peak: float) -> str:
        return "critical" if peak >= self.critical else "warning"

    def _message(self, stream: str, a: dict[str, Any], status: str, ts: int) -> dict[str, Any]:
        return {
            "id": f"{stream}:{self.kind}:{a['start']}", "stream": stream, "kind": self.kind, "state": status,
            "start_ts": a["start"], "end_ts": ts if status == "resolved" else None, "ts": ts,
            "score": a["last"], "peak": a["peak"], "threshold": self.on, "severity": self._severity(a["peak"]),
            "channels": a["channels"], "model": self.model, "version": self.version,
        }

    def _top(self, contrib: np.ndarray | None) -> list[Any]:
        if contrib is None:
            return []
        c = np.nan_to_num(np.asarray(contrib, dtype=np.float64), nan=-np.inf)
        idx = [int(i) for i in np.argsort(-c, kind="stable")[: self.top_k]]
        return [self.channel_names[i] for i in idx] if self.channel_names else idx

    def step(self, state: dict[str, Any], ts: np.ndarray, score: np.ndarray, channels: np.ndarray | None = None,
             stream: str = "") -> list[dict[str, Any]]:
        """Alert messages (in time order) for scores [T] with optional per-channel contributions [T, C]."""
        s = np.asarray(score, dtype=np.float64).reshape(-1)
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        out: list[dict[str, Any]] = []
        a = state["open"]
        for t in range(s.shape[0]):
            v, now = float(s[t]), int(ts[t])
            finite = math.isfinite(v)
            contrib = None if channels is None else np.asarray(channels)[t]
            if a is None:
                if finite and v >= self.on:
                    a = {"start": now, "peak": v, "last": v, "age": 0, "quiet": 0, "channels": self._top(contrib)}
                    out.append(self._message(stream, a, "firing", now))
                continue
            a["age"] += 1
            if finite:
                a["last"] = v
            if finite and v >= self.off:
                a["quiet"] = 0
            else:
                a["quiet"] += 1
            rose = finite and self._severity(v) != self._severity(a["peak"]) and v > a["peak"]
            if finite and v > a["peak"]:
                a["peak"], a["channels"] = v, self._top(contrib)
            if a["quiet"] >= self.resolve_after or a["age"] >= self.max_open:
                out.append(self._message(stream, a, "resolved", now))
                a = None
            elif rose or a["age"] % self.update_every == 0:
                out.append(self._message(stream, a, "updated", now))
        state["open"] = a
        return out
