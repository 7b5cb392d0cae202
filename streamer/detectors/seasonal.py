"""Seasonal memory: each reading's value one period earlier (a seasonal-naive forecast), from the stream's state.

A stream's memory is a ring of its latest readings: times as int64 and values as float32, held in its state as
two byte strings (little-endian), which snapshots write as base64 JSON strings; compact in memory and in every
changelog snapshot. `seasonal_lookup` looks up the readings of many streams at once, `seasonal_errors` the
errors against them (the daemon's batches); `SeasonalMemory.step` is a lookup for one stream.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector, as_2d

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
_KEY_LIMIT = 2**62  # the combined search keys (stream number times a span, plus a time) stay below this
_URLSAFE = str.maketrans("+/", "-_")
_NO_TIME = np.iinfo(np.int64).min  # a stream whose memory is empty: no slot of time remembered yet


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


def _decode_all(memories: list[dict[str, Any]], n_channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every memory's times and values, concatenated, and how many each holds: in one pass over joined bytes
    when all are held as bytes (the daemon's case between snapshots), else memory by memory."""
    ts_parts = [m.get("ts") or b"" for m in memories]
    x_parts = [m.get("x") or b"" for m in memories]
    if all(type(p) is bytes for p in ts_parts) and all(type(p) is bytes for p in x_parts):
        lengths = np.fromiter(map(len, ts_parts), dtype=np.int64, count=len(ts_parts)) // 8
        widths = np.fromiter(map(len, x_parts), dtype=np.int64, count=len(x_parts)) // (4 * n_channels)
        if np.array_equal(lengths, widths) and all(len(p) % 8 == 0 for p in ts_parts):
            ts = np.frombuffer(b"".join(ts_parts), dtype="<i8").astype(np.int64)
            x = np.frombuffer(b"".join(x_parts), dtype="<f4").reshape(-1, n_channels)
            return ts, x, lengths
    rings = [decode_memory(m, n_channels) for m in memories]
    return (np.concatenate([r[0] for r in rings] or [np.zeros(0, dtype=np.int64)]).astype(np.int64),
            np.concatenate([r[1] for r in rings] or [np.zeros((0, n_channels), dtype=np.float32)]),
            np.array([r[0].size for r in rings], dtype=np.int64))


def memory_length(state: dict[str, Any], n_channels: int = 1) -> int:
    """How many readings a memory holds."""
    return int(decode_memory(state, n_channels)[0].size)


class _Rings:
    """The memories of a batch's streams followed by their new readings, concatenated: stream i's times are
    cat_ts[cstart[i]:cstart[i] + total[i]] (increasing); new reading r sits at (or, not kept, would sit at) cat
    position pos[r], after every remembered reading older than it.

    With `step_ms`, only the first reading of each step-long slot of time is remembered (a coarse memory: a
    week in a few hundred readings); whether a reading is kept depends on the readings before it alone, so any
    chunking of a stream keeps the same ones.
    """

    def __init__(self, memories: list[dict[str, Any]], offsets: np.ndarray, ts: np.ndarray,
                 values: np.ndarray, step_ms: int = 0) -> None:
        off = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(off)
        self.x = np.asarray(values, dtype=np.float64)
        C = self.x.shape[1]
        ring_ts, ring_x, ring_len = _decode_all(memories, C)
        self.times = times = np.asarray(ts, dtype=np.int64).reshape(-1)
        self.owner = owner = np.repeat(np.arange(len(memories)), self.lengths)  # each new reading's stream
        ring_end = np.cumsum(ring_len)
        kept = self._kept(off, step_ms, np.where(ring_len > 0, ring_ts[np.maximum(ring_end - 1, 0)], _NO_TIME)
                          if ring_ts.size else np.full(len(memories), _NO_TIME))
        before = np.cumsum(kept) - kept  # kept readings before each one, over the whole batch ...
        before -= np.concatenate([[0], np.cumsum(kept)])[off[:-1]][owner]  # ... and within its stream
        self.added = np.bincount(owner[kept], minlength=len(memories))  # new readings remembered, per stream
        self.total = ring_len + self.added
        self.cstart = np.concatenate([[0], np.cumsum(self.total)[:-1]]).astype(np.int64)
        self.pos = self.cstart[owner] + ring_len[owner] + before
        # the rings and the kept new readings scattered into one array, each stream's memory before its readings
        at_ring = np.repeat(self.cstart - (ring_end - ring_len), ring_len) + np.arange(ring_ts.size)
        x32 = np.where(np.isfinite(self.x), self.x, np.nan).astype(np.float32)  # non-finite: remembered as NaN
        self.cat_ts = np.empty(int(self.total.sum()), dtype=np.int64)
        self.cat_x = np.empty((self.cat_ts.size, C), dtype=np.float32)
        self.cat_ts[at_ring], self.cat_x[at_ring] = ring_ts, ring_x
        self.cat_ts[self.pos[kept]], self.cat_x[self.pos[kept]] = times[kept], x32[kept]

    def _kept(self, off: np.ndarray, step_ms: int, last_kept: np.ndarray) -> np.ndarray:
        """Which new readings are remembered: all, or the first of each `step_ms` slot (each stream's first new
        reading against its memory's newest time, `last_kept`)."""
        if step_ms <= 0:
            return np.ones(self.times.size, dtype=bool)
        slot = self.times // int(step_ms)
        prev = np.empty_like(slot)
        prev[1:] = slot[:-1]
        has = self.lengths > 0
        prev[off[:-1][has]] = np.where(last_kept[has] == _NO_TIME, _NO_TIME, last_kept[has] // int(step_ms))
        return slot != prev

    def window_start(self, max_len: int) -> np.ndarray:
        """Per new reading, the first position a lookup may use: its stream's `max_len`-th reading before it."""
        return np.maximum(self.cstart[self.owner], self.pos - int(max_len))

    def positions(self, query: np.ndarray, max_len: int) -> np.ndarray:
        """Per new reading, the first of its stream's positions with a time at or after `query`, within the
        `max_len` readings before it (so between pos - max_len and pos)."""
        at = _positions(self.cat_ts, self.cstart, self.total, self.owner, query)
        return np.minimum(np.maximum(at, self.window_start(max_len)), self.pos)

    def nearest(self, period_ms: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Per new reading, the position of the reading nearest to one period earlier and whether it counts: it
        lies within half the sampling interval (the reading's time minus the previous remembered one's, which in
        a coarse memory spans a slot) of t - period."""
        cat_ts, pos, times = self.cat_ts, self.pos, self.times
        target = times - int(period_ms)
        lo = self.window_start(max_len)
        at = self.positions(target, max_len)
        before_ok, after_ok = at - 1 >= lo, at < pos
        gap_before = np.where(before_ok, np.abs(cat_ts[np.maximum(at - 1, 0)] - target), np.iinfo(np.int64).max)
        gap_after = np.where(after_ok, np.abs(cat_ts[np.minimum(at, cat_ts.size - 1)] - target),
                             np.iinfo(np.int64).max)
        best = np.where(gap_after < gap_before, at, at - 1)  # ties: the earlier reading
        has_prev = pos - 1 >= self.cstart[self.owner]
        tol = (times - cat_ts[np.maximum(pos - 1, 0)]) / 2.0
        match = has_prev & (before_ok | after_ok) & (np.minimum(gap_before, gap_after) <= tol)
        return best, match

    def remember(self, memories: list[dict[str, Any]], keep_ms: int, max_len: int) -> None:
        """Write back each memory that gained readings: what later lookups reaching `keep_ms` back can still need
        (a memory that gained none keeps what it held: its newest reading, and so what it must keep, is the same)."""
        _remember(memories, self.cat_ts, self.cat_x, self.cstart, self.total, self.added, keep_ms, max_len)


def seasonal_lookup(memories: list[dict[str, Any]], offsets: np.ndarray, ts: np.ndarray, values: np.ndarray,
                    period_ms: int, max_len: int) -> np.ndarray:
    """For readings [N, C] laid out by `offsets` (stream i: rows offsets[i]:offsets[i+1]), each one's value one
    period earlier from its stream's memory (NaN where there is none), float64 [N, C]; the memories are updated.

    Per stream this is one pass over its readings in order: reading t is looked up among the (at most `max_len`)
    readings before it, and the nearest to t - period counts when it lies within half the sampling interval
    (t minus the previous reading's time) of t - period.
    """
    rings = _Rings(memories, offsets, ts, values)
    out = np.full(rings.x.shape, np.nan)
    if rings.times.size:
        best, match = rings.nearest(period_ms, max_len)
        out[match] = rings.cat_x[best[match]]
    rings.remember(memories, period_ms, max_len)
    return out


def seasonal_errors(memories: list[dict[str, Any]], offsets: np.ndarray, ts: np.ndarray, values: np.ndarray,
                    period_ms: int, max_len: int, slack_ms: int = 0, step_ms: int = 0) -> np.ndarray:
    """|reading - the same stream's reading one period earlier| [N, C], the smallest over the nearest one
    (`seasonal_lookup`'s rule) and every remembered reading within `slack_ms` of t - period: a daily job that
    runs a few minutes late is not new. NaN where there is none; the memories are updated (kept for the period
    plus the slack, at most `max_len` readings, one per `step_ms` when that is set)."""
    rings = _Rings(memories, offsets, ts, values, step_ms)
    x, cat_x = rings.x, rings.cat_x
    err = np.full(x.shape, np.nan)
    if rings.times.size:
        best, match = rings.nearest(period_ms, max_len)
        err[match] = np.abs(x[match] - cat_x[best[match]])
        if slack_ms > 0:
            target = rings.times - int(period_ms)
            first = rings.positions(target - int(slack_ms), max_len)
            width = rings.positions(target + int(slack_ms) + 1, max_len) - first
            for d in range(int(width.max(initial=0))):  # the readings within the slack, one offset at a time
                rows = np.flatnonzero(width > d)
                err[rows] = np.fmin(err[rows], np.abs(x[rows] - cat_x[first[rows] + d]))
    rings.remember(memories, int(period_ms) + int(slack_ms), max_len)
    return err


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
              total: np.ndarray, added: np.ndarray, period_ms: int, max_len: int) -> None:
    """Keep, per stream with `added` readings, the last reading before (latest - period) and all since, at most
    `max_len` readings: later lookups cannot need anything older."""
    had = np.flatnonzero(added > 0)
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
    off for it (`spanning` makes a coarse memory that reaches the period at any rate). Used by the pipeline as a
    second forecaster (`errors`): a forecast error that yesterday's value at the same time explains (a daily job,
    a daily ramp) is not an anomaly; with `slack_ms` the readings that close to t - period count too.
    """

    score_range = (-math.inf, math.inf)

    def __init__(self, n_channels: int = 1, period_ms: int = DAY_MS, max_len: int = 1500, slack_ms: int = 0,
                 step_ms: int = 0) -> None:
        self.n_channels, self.period_ms, self.max_len = n_channels, int(period_ms), int(max_len)
        self.slack_ms, self.step_ms = int(slack_ms), int(step_ms)

    @classmethod
    def spanning(cls, n_channels: int, period_ms: int, max_len: int, slack_ms: int) -> SeasonalMemory:
        """A coarse memory whose `max_len` readings always reach one period (plus the slack) back: one reading
        kept per slot of (period + slack) / (max_len - 1), at any sampling rate."""
        step = -(-(int(period_ms) + int(slack_ms)) // max(int(max_len) - 1, 1))
        return cls(n_channels, period_ms, max_len, slack_ms, step)

    def errors(self, memories: list[dict[str, Any]], offsets: np.ndarray, ts: np.ndarray,
               values: np.ndarray) -> np.ndarray:
        """The seasonal-naive forecast's errors for many streams' readings (`seasonal_errors`)."""
        return seasonal_errors(memories, offsets, ts, values, self.period_ms, self.max_len, self.slack_ms,
                               self.step_ms)

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
