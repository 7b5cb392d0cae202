"""Events from per-step probabilities with hysteresis (onset and offset messages), and the silent-stream check."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector


def event_probability(logits: np.ndarray) -> np.ndarray:
    """P(event) from an event head's logits: the logistic function in its tanh form, which cannot overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


class HysteresisEvents(Detector):
    """An event starts when p >= `on` for `min_on` consecutive readings and ends when p < `off` for `min_off`.

    Onset message: {'type': 'onset', 'start': ts of the first reading of the run, 'end': None, 'confidence',
    'ts': the reading that completes the run, when it is emitted}; offset: {'type': 'offset', 'start',
    'end': ts of the first reading of the closing run, 'confidence': mean p over the event}.
    NaN probabilities count as neither on nor off (they extend no run and break none); p is clipped to [0, 1].
    """

    score_range = (0.0, 1.0)

    def __init__(self, on: float = 0.6, off: float = 0.4, min_on: int = 3, min_off: int = 3,
                 kind: str = "event") -> None:
        if off > on:
            raise ValueError(f"hysteresis needs off <= on, got on={on}, off={off}")
        self.on, self.off, self.min_on, self.min_off, self.kind = on, off, min_on, min_off, kind

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """Not in an event; no pending run."""
        return {"active": False, "run": 0, "run_start": None, "sum": 0.0, "count": 0, "start": None}

    def step(self, state: dict[str, Any], ts: np.ndarray, prob: np.ndarray,
             stream: str = "") -> list[dict[str, Any]]:
        """Onset/offset messages for probabilities [T] (one event kind)."""
        p = np.asarray(prob, dtype=np.float64).reshape(-1)
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        st = dict(state)
        out: list[dict[str, Any]] = []
        for t in range(p.shape[0]):
            v, now = float(p[t]), int(ts[t])
            if not math.isfinite(v):
                continue
            v = min(1.0, max(0.0, v))
            if not st["active"]:
                if v >= self.on:
                    if st["run"] == 0:
                        st["run_start"], st["sum"], st["count"] = now, 0.0, 0
                    st["run"] += 1
                    st["sum"] += v
                    st["count"] += 1
                    if st["run"] >= self.min_on:
                        st.update(active=True, run=0, start=st["run_start"], run_start=None)
                        out.append({"stream": stream, "kind": self.kind, "type": "onset", "start": st["start"],
                                    "end": None, "confidence": st["sum"] / st["count"], "ts": now})
                else:
                    st["run"] = 0
                continue
            st["sum"] += v
            st["count"] += 1
            if v < self.off:
                if st["run"] == 0:
                    st["run_start"] = now
                st["run"] += 1
                if st["run"] >= self.min_off:
                    out.append({"stream": stream, "kind": self.kind, "type": "offset", "start": st["start"],
                                "end": st["run_start"], "confidence": st["sum"] / st["count"], "ts": now})
                    st.update(self.init_state())
            else:
                st["run"] = 0
        state.update(st)
        return out


class SilenceDetector(Detector):
    """'silent' once a stream has had no reading for `timeout_ms` (checked with `check`), 'resumed' on return."""

    score_range = (0.0, math.inf)

    def __init__(self, timeout_ms: int = 300_000) -> None:
        self.timeout_ms = int(timeout_ms)

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """Never seen, not silent."""
        return {"last": None, "silent": False}

    def step(self, state: dict[str, Any], ts: np.ndarray, stream: str = "") -> list[dict[str, Any]]:
        """Record readings at ts [T]; a 'resumed' event if the stream had been reported silent."""
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        out: list[dict[str, Any]] = []
        if ts.size == 0:
            return out
        if state["silent"]:
            out.append({"stream": stream, "kind": "silence", "type": "offset", "start": state["last"],
                        "end": int(ts[0]), "confidence": 1.0, "ts": int(ts[0])})
            state["silent"] = False
        state["last"] = max(int(ts.max()), state["last"] if state["last"] is not None else int(ts.max()))
        return out

    def check(self, state: dict[str, Any], now_ms: int, stream: str = "") -> list[dict[str, Any]]:
        """A 'silent' onset (once) when now - last reading >= timeout; call it on a timer, e.g. every poll."""
        if state["last"] is None or state["silent"] or now_ms - state["last"] < self.timeout_ms:
            return []
        state["silent"] = True
        return [{"stream": stream, "kind": "silence", "type": "onset", "start": state["last"], "end": None,
                 "confidence": 1.0, "ts": int(now_ms)}]
