"""Seasonal memory: each reading's value one period earlier (a seasonal-naive forecast), from the stream's state.

A stream's memory is a ring of its latest readings: times as int64 and values as float32, held in its state as
two byte strings (little-endian), which snapshots write as base64 JSON strings; compact in memory and in every
changelog snapshot. `seasonal_lookup` looks up the readings of many streams at once (the daemon's batches);
`SeasonalMemory.step` is that call for one stream.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector, as_2d

DAY_MS = 86_400_000
_KEY_LIMIT = 2**62  # the combined search keys (stream number times a span, plus a time) stay below this
_URLSAFE = str.maketrans("+/", "-_")


def encode_memory(ts: np.ndarray, x: np.ndarray) -> dict[str, bytes]:
    """A memory's state: times (int64 [m]) and values (float32 [m, C]) as little-endian bytes."""
    return {"ts": np.ascontiguousarray(ts, dtype="<i8").tobytes(),
            "x": np.ascontiguousarray(x, dtype="<f4").tobytes()}


def _raw(part: bytes | str) -> bytes:
    """The bytes of a memory part: as held, or from the base64 string a snapshot wrote (either alphabet)."""
    return base64.urlsafe_b64decode(part.translate(_URLSAFE)) if isinstance(part, str) else part


def decode_memory(state: dict[str, Any], n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(times int64 [m], values float32 [m, C]) of a memory's state; a memory of another shape reads as empty.

    Memories written before the compact form (lists of times and of value rows, None for non-finite) are read too.
    """
    ts_part, x_part = state.get("ts") or b"", state.get("x") or b""
    if isinstance(ts_part, list):
        ts = np.asarray(ts_part, dtype=np.int64)
        x = np.array([[np.nan if v is None else v for v in row] for row in x_part], dtype=np.float32)
    else:
        ts = np.frombuffer(_raw(ts_part), dtype="<i8")
        x = np.frombuffer(_raw(x_part), dtype="<f4")
    if ts.size == 0 or x.size != ts.size * n_channels:
        return np.zeros(0, dtype=np.int64), np.zeros((0, n_channels), dtype=np.float32)
    return ts, x.reshape(ts.size, n_channels)


def memory_length(state: dict[str, Any], n_channels: int = 1) -> int:
    """How many readings a memory holds."""
    return int(decode_memory(state, n_channels)[0].size)


def seasonal_lookup(memories: list[dict[str, Any]], offsets: np.ndarray, ts: np.ndarray, values: np.ndarray,
                    period_ms: int, max_len: int) -> np.ndarray:
    """For readings [N, C] laid out by `offsets` (stream i: rows offsets[i]:offsets[i+1]), each one's value one
    period earlier from its stream's memory (NaN where there is none), float64 [N, C]; the memories are updated.

    Per stream this is one pass over its readings in order: reading t is looked up among the (at most `max_len`)
    readings before it, and the nearest to t - period counts when it lies within half the sampling interval
    (t minus the previous reading's time) of t - period.
    """
    off = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(off)
    x = np.asarray(values, dtype=np.float64)
    C = x.shape[1]
    rings = [decode_memory(m, C) for m in memories]
    ring_len = np.array([r[0].size for r in rings], dtype=np.int64)
    times = np.asarray(ts, dtype=np.int64).reshape(-1)
    kept = np.where(np.isfinite(x), x, np.nan).astype(np.float32)  # non-finite values are remembered as NaN
    cat_ts = np.concatenate([p for i, (rt, _) in enumerate(rings) for p in (rt, times[off[i]:off[i + 1]])]
                            or [np.zeros(0, dtype=np.int64)])
    cat_x = np.concatenate([p for i, (_, rx) in enumerate(rings) for p in (rx, kept[off[i]:off[i + 1]])]
                           or [np.zeros((0, C), dtype=np.float32)])
    total = ring_len + lengths
    cstart = np.concatenate([[0], np.cumsum(total)[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(len(rings)), lengths)  # each new reading's stream
    pos = cstart[owner] + ring_len[owner] + (np.arange(times.size) - off[:-1][owner])
    target = times - int(period_ms)
    out = np.full(x.shape, np.nan)
    if times.size:
        lo = np.maximum(cstart[owner], pos - int(max_len))
        at = np.maximum(_positions(cat_ts, cstart, total, owner, target), lo)
        before_ok, after_ok = at - 1 >= lo, at < pos
        gap_before = np.where(before_ok, np.abs(cat_ts[np.maximum(at - 1, 0)] - target), np.iinfo(np.int64).max)
        gap_after = np.where(after_ok, np.abs(cat_ts[np.minimum(at, cat_ts.size - 1)] - target),
                             np.iinfo(np.int64).max)
        best = np.where(gap_after < gap_before, at, at - 1)  # ties: the earlier reading
        gap = np.minimum(gap_before, gap_after)
        has_prev = pos - 1 >= cstart[owner]
        tol = (times - cat_ts[np.maximum(pos - 1, 0)]) / 2.0
        match = has_prev & (before_ok | after_ok) & (gap <= tol)
        out[match] = cat_x[best[match]]
    _remember(memories, cat_ts, cat_x, cstart, total, lengths, period_ms, max_len)
    return out


def _positions(cat_ts: np.ndarray, cstart: np.ndarray, total: np.ndarray, owner: np.ndarray,
               query: np.ndarray) -> np.ndarray:
    """For each query time, the index (into the concatenation) of the first of its stream's times at or after it:
    stream i's times are cat_ts[cstart[i]:cstart[i] + total[i]], increasing. One search for all streams, on keys
    that place every stream's times after the previous stream's; a loop per stream where such keys would not fit
    in int64."""
    if query.size == 0:
        return np.zeros(0, dtype=np.int64)
    base = min(int(cat_ts.min()), int(query.min())) if cat_ts.size else int(query.min())
    span = max(int(cat_ts.max()) if cat_ts.size else 0, int(query.max())) - base + 1
    if total.size * span < _KEY_LIMIT:
        cat_owner = np.repeat(np.arange(total.size), total)
        return np.searchsorted(cat_owner * span + (cat_ts - base), owner * span + (query - base), side="left")
    out = np.empty(query.size, dtype=np.int64)
    for i in np.unique(owner).tolist():
        rows = owner == i
        a = int(cstart[i])
        out[rows] = a + np.searchsorted(cat_ts[a:a + int(total[i])], query[rows], side="left")
    return out


def _remember(memories: list[dict[str, Any]], cat_ts: np.ndarray, cat_x: np.ndarray, cstart: np.ndarray,
              total: np.ndarray, lengths: np.ndarray, period_ms: int, max_len: int) -> None:
    """Keep, per stream that had readings, the last reading before (latest - period) and all since, at most
    `max_len` readings: later lookups cannot need anything older."""
    had = np.flatnonzero(lengths > 0)
    if had.size == 0:
        return
    end = cstart[had] + total[had]
    first = _positions(cat_ts, cstart, total, had, cat_ts[end - 1] - int(period_ms)) - 1
    keep = np.maximum(np.maximum(first, end - int(max_len)), cstart[had])
    for i, a, b in zip(had.tolist(), keep.tolist(), end.tolist(), strict=True):
        memories[i].update(encode_memory(cat_ts[a:b], cat_x[a:b]))


class SeasonalMemory(Detector):
    """For each reading at time t, the reading of the same stream nearest to t - `period_ms` (NaN if none).

    A reading counts as "one period earlier" when its time is within half the current sampling interval
    (t minus the previous reading's time) of t - period, so irregular or gappy streams simply get NaN there.
    The state keeps the readings of the last period, at most `max_len` of them (values as float32): a stream
    sampled faster than period / max_len keeps too short a memory and gets NaN, which turns the seasonal view
    off for it. Used by the pipeline as a second forecaster: a forecast error that yesterday's value at the same
    time explains (a daily job, a daily ramp) is not an anomaly.
    """

    score_range = (-math.inf, math.inf)

    def __init__(self, n_channels: int = 1, period_ms: int = DAY_MS, max_len: int = 1500) -> None:
        self.n_channels, self.period_ms, self.max_len = n_channels, int(period_ms), int(max_len)

    def init_state(self, n_channels: int | None = None) -> dict[str, Any]:
        """Empty memory."""
        return {"ts": b"", "x": b""}

    def step(self, state: dict[str, Any], ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values one period before each reading, float64 [T, C] (NaN where there is none); then remembers them."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        c = x.shape[1] if x.shape[0] else self.n_channels
        x = as_2d(x, c) if x.shape[0] else np.zeros((0, c))
        return seasonal_lookup([state], np.array([0, x.shape[0]]), ts, x, self.period_ms, self.max_len)
