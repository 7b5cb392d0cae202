"""Telemanom's nonparametric dynamic threshold on EWMA-smoothed errors over a trailing window (Hundman et al. 2018)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamer.detectors.base import Detector


def telemanom_epsilon(e_s: np.ndarray, z_values: np.ndarray, max_seqs: int = 5, buffer: int = 0) -> float:
    """Threshold mu + z sigma maximising (dmu/mu + dsigma/sigma) / (|E_a| + |E_seq|^2) over z (Telemanom eq. 2).

    With `buffer` > 0 the count is Telemanom's own (`find_epsilon`): each value above the threshold is widened by
    `buffer` - 1 readings on either side before E_a and the sequences E_seq (single readings not counted) are
    counted, and mu + 12 sigma is kept when no z qualifies.
    """
    if buffer > 0:
        return _epsilon_buffered(e_s, z_values, max_seqs, buffer)
    mu, sd = float(e_s.mean()), float(e_s.std())
    best, eps = -math.inf, mu + float(z_values[-1]) * sd
    if sd <= 0.0 or mu <= 0.0:
        return eps
    for z in z_values.tolist():
        e = mu + z * sd
        above = e_s >= e
        n_above = int(above.sum())
        if n_above == 0 or n_above >= 0.5 * e_s.size:
            continue
        below = e_s[~above]
        n_seq = int(np.count_nonzero(np.diff(np.r_[0, above.astype(np.int8)]) == 1))
        if n_seq > max_seqs:
            continue
        score = ((mu - below.mean()) / mu + (sd - below.std()) / sd) / (n_above + n_seq**2)
        if score >= best:
            best, eps = score, e
    return eps


def _epsilon_buffered(e_s: np.ndarray, z_values: np.ndarray, max_seqs: int, buffer: int) -> float:
    """`telemanom_epsilon` with Telemanom's widened anomaly count (its `find_epsilon`)."""
    mu, sd = float(e_s.mean()), float(e_s.std())
    best, eps = 0.0, mu + 12.0 * sd
    if sd <= 0.0 or mu <= 0.0:
        return eps
    n = e_s.size
    for z in z_values.tolist():
        e = mu + z * sd
        idx = np.flatnonzero(e_s > e)
        below = e_s[e_s < e]
        if idx.size == 0 or below.size == 0:
            continue
        edges = np.zeros(n + 1, dtype=np.int64)
        np.add.at(edges, np.maximum(0, idx - (buffer - 1)), 1)
        np.add.at(edges, np.minimum(n, idx + buffer), -1)
        widened = np.cumsum(edges[:n]) > 0
        n_anom = int(widened.sum())
        n_seq = sum(1 for a, b in _runs(widened) if b > a)
        score = ((mu - below.mean()) / mu + (sd - below.std()) / sd) / (n_seq**2 + n_anom)
        if score >= best and n_seq <= max_seqs and n_anom < 0.5 * n:
            best, eps = score, e
    return eps


class DynamicThreshold(Detector):
    """Smoothed error e_s = EWMA(error, span `span`); threshold epsilon from the last `window` values of e_s,
    recomputed every `every` readings (Telemanom's batches) once `warmup` values are in.

    Outputs per reading: 'ratio' = e_s / epsilon (>= 0; above 1 is anomalous), 'flag' (ratio > 1) and
    'threshold' (epsilon, NaN during warm-up). The window keeps adapting, so a lasting new error level
    raises mu and sigma and stops being flagged. NaN errors give ratio 0 and are skipped.
    """

    score_range = (0.0, math.inf)

    def __init__(self, window: int = 1000, span: float = 30.0, every: int = 50, warmup: int = 200,
                 z_min: float = 2.5, z_max: float = 12.0, z_step: float = 0.5) -> None:
        self.window, self.every, self.warmup = window, every, warmup
        self.alpha = 2.0 / (span + 1.0)  # pandas ewm(span=...) as Telemanom uses
        self.z_values = np.arange(z_min, z_max, z_step)

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """No smoothed errors yet, no threshold."""
        return {"es": None, "buf": [], "eps": None, "since": 0}

    def step(self, state: dict[str, Any], ts: np.ndarray, error: np.ndarray) -> dict[str, np.ndarray]:
        """{'ratio' [T], 'flag' [T] bool, 'threshold' [T]} for non-negative errors [T]."""
        err = np.asarray(error, dtype=np.float64).reshape(-1)
        es, eps, since = state["es"], state["eps"], int(state["since"])
        buf: list[float] = list(state["buf"])
        T = err.shape[0]
        ratio, thr = np.zeros(T), np.full(T, np.nan)
        for t, e in enumerate(err.tolist()):
            if not math.isfinite(e):
                continue
            es = e if es is None else self.alpha * e + (1.0 - self.alpha) * es
            buf.append(es)
            if len(buf) > self.window:
                del buf[0]
            since += 1
            if len(buf) >= self.warmup and (eps is None or since >= self.every):
                eps, since = telemanom_epsilon(np.asarray(buf), self.z_values), 0
            if eps is not None:
                thr[t] = eps
                ratio[t] = es / eps if eps > 0 else (math.inf if es > 0 else 0.0)
        ratio = np.minimum(ratio, 1e6)
        state["es"], state["eps"], state["since"], state["buf"] = es, eps, since, buf
        return {"ratio": ratio, "flag": ratio > 1.0, "threshold": thr}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) of every run of True."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist(), strict=True))


def telemanom_prune(seq_max: list[float], rest_max: float, p: float) -> list[bool]:
    """Telemanom's pruning: sort sequence maxima (then the largest non-anomalous error) descending; a sequence
    is kept only if some drop of at least the fraction `p` follows it down the sorted list."""
    order = np.argsort(-np.asarray(seq_max), kind="stable")
    vals = np.r_[np.asarray(seq_max)[order], rest_max]
    keep_upto = -1
    for i in range(len(order)):
        if vals[i] > 0 and (vals[i] - vals[i + 1]) / vals[i] > p:
            keep_upto = i
    keep = [False] * len(seq_max)
    for r in range(keep_upto + 1):
        keep[int(order[r])] = True
    return keep


class TelemanomSequences(Detector):
    """Telemanom's anomalous sequences (Hundman et al. 2018), streamed: errors are smoothed (EWMA, span `span`);
    every `batch` readings the threshold epsilon is computed on the last `window` smoothed errors (eq. 2), the
    runs above it are found in that window, pruned (`prune`: a run must stand out from the next smaller one by
    that fraction) and its runs inside the newest batch are reported. Errors below `min_frac` of the window's
    5-95 percentile value range never count (flat channels), as in Telemanom. `invert`: as Telemanom, the errors
    mirrored around the window's mean are thresholded and pruned the same way (unusually small errors, e.g. a
    signal that went flat, are anomalous too). `epsilon_buffer` > 0: Telemanom's own anomaly count in the
    threshold's objective (see `telemanom_epsilon`). Both off by default.

    `step` returns 'es' and 'threshold' per reading and 'anomalous': the global reading numbers (0-based count of
    readings this stream has seen) of the readings decided anomalous in this call, each decided when its batch
    completes (a latency of at most `batch` readings; 'decided' holds the number of the deciding reading).
    NaN errors are skipped (they count as readings). State: the last `window` smoothed errors and values.
    """

    score_range = (0.0, math.inf)

    def __init__(self, window: int = 2100, batch: int = 70, span: float = 105.0, prune: float = 0.13,
                 min_frac: float = 0.05, warmup: int = 70, z_min: float = 2.5, z_max: float = 12.0,
                 z_step: float = 0.5, invert: bool = False, epsilon_buffer: int = 0) -> None:
        self.window, self.batch, self.prune, self.min_frac, self.warmup = window, batch, prune, min_frac, warmup
        self.alpha = 2.0 / (span + 1.0)
        self.z_values = np.arange(z_min, z_max, z_step)
        self.invert, self.epsilon_buffer = invert, epsilon_buffer

    def init_state(self, n_channels: int = 1) -> dict[str, Any]:
        """No readings yet."""
        return {"n": 0, "es": None, "buf": [], "vals": [], "idx": [], "since": 0, "eps": None}

    def _epsilon(self, es: np.ndarray) -> float:
        """Threshold of one window of (possibly inverted) smoothed errors."""
        return telemanom_epsilon(es, self.z_values, buffer=self.epsilon_buffer)

    def _flag(self, es: np.ndarray, eps: float, floor: float, idx: np.ndarray, first_new: int) -> list[int]:
        """Reading numbers in the newest batch of the pruned runs of es above both eps and floor."""
        above = (es > eps) & (es > floor)
        runs = _runs(above)
        if not runs:
            return []
        rest = es[~above]
        keep = telemanom_prune([float(es[a : b + 1].max()) for a, b in runs],
                               float(rest.max()) if rest.size else 0.0, self.prune)
        out: list[int] = []
        for (a, b), k in zip(runs, keep, strict=True):
            if k and b >= first_new:
                out.extend(idx[max(a, first_new) : b + 1].tolist())
        return out

    def _decide(self, es: np.ndarray, vals: np.ndarray, idx: np.ndarray, new: int) -> tuple[float, list[int]]:
        """(epsilon, reading numbers flagged in the newest `new` readings) for one window."""
        eps = self._epsilon(es)
        fin = vals[np.isfinite(vals)]
        rng = float(np.percentile(fin, 95) - np.percentile(fin, 5)) if fin.size else 0.0
        floor = self.min_frac * rng
        spread = es.std() > self.min_frac * (fin.std() if fin.size else 0.0)
        first_new = len(es) - new
        out: list[int] = []
        if (spread or es.max() > floor) and es.max() > self.min_frac:
            out = self._flag(es, eps, floor, idx, first_new)
        if self.invert:  # errors mirrored around their mean: unusually small errors (drops) are anomalous too
            inv = 2.0 * es.mean() - es
            if (spread or inv.max() > floor) and inv.max() > self.min_frac:
                out = sorted(set(out).union(self._flag(inv, self._epsilon(inv), floor, idx, first_new)))
        return eps, out

    def step(self, state: dict[str, Any], ts: np.ndarray, error: np.ndarray,
             value: np.ndarray | None = None) -> dict[str, Any]:
        """{'es' [T], 'threshold' [T] (NaN before the first batch), 'anomalous' [global reading numbers]}."""
        err = np.asarray(error, dtype=np.float64).reshape(-1)
        val = np.full(err.shape, np.nan) if value is None else np.asarray(value, dtype=np.float64).reshape(-1)
        T = err.shape[0]
        es_out, thr = np.zeros(T), np.full(T, np.nan)
        n, es, since, eps = int(state["n"]), state["es"], int(state["since"]), state["eps"]
        buf, vals, idx = list(state["buf"]), list(state["vals"]), list(state["idx"])
        found: list[int] = []
        decided: list[int] = []
        for t in range(T):
            e, v = float(err[t]), float(val[t])
            if math.isfinite(e):
                es = e if es is None else self.alpha * e + (1.0 - self.alpha) * es
                buf.append(es)
                vals.append(v if math.isfinite(v) else None)
                idx.append(n)
                if len(buf) > self.window:
                    del buf[0], vals[0], idx[0]
                since += 1
                es_out[t] = es
                if since >= self.batch and len(buf) >= self.warmup:
                    new = min(since, len(buf))
                    eps, hits = self._decide(np.asarray(buf), np.array([np.nan if x is None else x for x in vals]),
                                             np.asarray(idx), new)
                    found.extend(hits)
                    decided.extend([n] * len(hits))
                    since = 0
            if eps is not None:
                thr[t] = eps
            n += 1
        state.update(n=n, es=es, buf=buf, vals=vals, idx=idx, since=since, eps=eps)
        return {"es": es_out, "threshold": thr, "anomalous": found, "decided": decided}
