"""Batch layouts: stateful TBPTT chunks (row i of every batch continues the same lane) and random windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Stream:
    """One prepared stream: normalised inputs x float32 [T, F], optional codes/labels; scored rows [lo, hi)."""

    name: str
    x: np.ndarray
    cat: np.ndarray | None = None
    labels: np.ndarray | None = None
    lo: int = 0
    hi: int = -1

    def __post_init__(self) -> None:
        if self.hi < 0:
            self.hi = int(self.x.shape[0])


@dataclass(frozen=True)
class Lane:
    """A contiguous run of one stream fed to one batch row: inputs [start, end), losses from loss_from on."""

    stream: int
    start: int
    loss_from: int
    end: int


@dataclass
class Batch:
    """One chunk per row: times t[b, s] (-1 on padding) of stream[b]; reset[b]: the row starts from a fresh state."""

    stream: np.ndarray  # int64 [B] (-1: idle row)
    t: np.ndarray  # int64 [B, T]
    lengths: np.ndarray  # int64 [B]
    reset: np.ndarray  # bool [B]
    scored: np.ndarray  # bool [B, T]: step counts in the loss (before target validity)


def make_lanes(streams: list[Stream], n_lanes: int, washout: int, rng: np.random.Generator | None = None) -> list[Lane]:
    """Cut the scored rows of all streams into about n_lanes pieces; each piece reads `washout` earlier rows first.

    With rng, the cut points move by a random offset (a different layout each epoch). Rows before `washout` have
    no full context and are never scored; every other scored row is scored exactly once per epoch.
    """
    total = sum(s.hi - s.lo for s in streams)
    piece = max(1, math.ceil(total / max(1, n_lanes)))
    lanes = []
    for i, s in enumerate(streams):
        shift = int(rng.integers(piece)) if rng is not None and s.hi - s.lo > piece else 0
        cuts = [s.lo] + list(range(s.lo + shift if shift else s.lo + piece, s.hi, piece))
        cuts = sorted(set(c for c in cuts if c < s.hi)) + [s.hi]
        for a, b in zip(cuts, cuts[1:], strict=False):
            start, loss_from = max(0, a - washout), max(a, washout)  # warm: exactly `washout` rows of context
            if loss_from < b:
                lanes.append(Lane(i, start, loss_from, b))
    return lanes


def schedule(lanes: list[Lane], n_rows: int, tbptt: int, rng: np.random.Generator | None = None) -> list[Batch]:
    """Stateful layout: lanes assigned to rows (least loaded first); batch k holds chunk k of every row."""
    order = list(range(len(lanes)))
    if rng is not None:
        rng.shuffle(order)
    rows: list[list[tuple[int, int, int, bool, int]]] = [[] for _ in range(n_rows)]
    load = np.zeros(n_rows, dtype=np.int64)
    for li in sorted(order, key=lambda i: -(lanes[i].end - lanes[i].start)):
        lane = lanes[li]
        r = int(np.argmin(load))
        for j, a in enumerate(range(lane.start, lane.end, tbptt)):
            rows[r].append((lane.stream, a, min(a + tbptt, lane.end), j == 0, lane.loss_from))
        load[r] = len(rows[r])
    n_batches = int(load.max()) if len(lanes) else 0
    batches = []
    for k in range(n_batches):
        stream = np.full(n_rows, -1, dtype=np.int64)
        t = np.full((n_rows, tbptt), -1, dtype=np.int64)
        lengths = np.zeros(n_rows, dtype=np.int64)
        reset = np.zeros(n_rows, dtype=bool)
        scored = np.zeros((n_rows, tbptt), dtype=bool)
        for r in range(n_rows):
            if k >= len(rows[r]):
                continue
            s, a, b, first, loss_from = rows[r][k]
            stream[r], lengths[r], reset[r] = s, b - a, first
            t[r, : b - a] = np.arange(a, b)
            scored[r, : b - a] = t[r, : b - a] >= loss_from
        batches.append(Batch(stream, t, lengths, reset, scored))
    return batches


def window_batches(streams: list[Stream], window: int, score_last: int, batch: int, min_end: int,
                   rng: np.random.Generator) -> list[Batch]:
    """Window layout: random windows [e - window, e) from a fresh state, loss on their last `score_last` steps."""
    ends = [(i, e) for i, s in enumerate(streams) for e in range(max(s.lo + 1, window, min_end), s.hi + 1)]
    if not ends:
        return []
    picks = rng.permutation(len(ends))
    out = []
    for j in range(0, len(picks), batch):
        sel = [ends[p] for p in picks[j : j + batch]]
        n = len(sel)
        t = np.stack([np.arange(e - window, e) for _, e in sel])
        scored = np.zeros((n, window), dtype=bool)
        scored[:, window - score_last :] = True
        out.append(Batch(np.array([i for i, _ in sel]), t, np.full(n, window), np.ones(n, dtype=bool), scored))
    return out
