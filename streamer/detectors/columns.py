"""The detectors' running statistics for many streams at once, as columns of arrays: the one definition of their
arithmetic.

The daemon steps thousands of streams position by position (the t-th reading of every stream that has one,
together); a single stream's detector (`ForecastErrorScorer`, `OnlineNormaliser`, `AnomalyLikelihood`) is a batch
of one stepped reading by reading. Either way the same operations run in the same order, so a stream's results do
not depend on which streams share its batch or how its readings were chunked.
"""

from __future__ import annotations

import math

import numpy as np

_LOG_EPS = math.log(1e-10)
# libm's erfc and log applied elementwise (numpy has no erfc, and its SIMD log may differ in the last bit from
# libm's, which the scores were defined with)
_ERFC = np.frompyfunc(math.erfc, 1, 1)
_LOG = np.frompyfunc(math.log, 1, 1)


def tail_probabilities(z: np.ndarray) -> np.ndarray:
    """Upper tail probability Q(z) of the standard normal, elementwise."""
    return 0.5 * _ERFC(np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64)


def log_tail_scores(z: np.ndarray) -> np.ndarray:
    """NAB's log-scaled likelihood of each upper-tail probability Q(z): 0 at Q = 1, 0.5 at 1e-5, 1 at 1e-10."""
    return _log_scale(tail_probabilities(z))


def _log_scale(q: np.ndarray) -> np.ndarray:
    """NAB's log scale of upper-tail probabilities q."""
    s = _LOG(q + 1e-10).astype(np.float64) / _LOG_EPS
    s = np.where(s > 0.0, s, 0.0)  # NaN stays NaN here, as max(0.0, NaN) does in Python
    return np.where(q < 1.0, np.where(s < 1.0, s, 1.0), 0.0)


class EwmaColumns:
    """Per stream and channel: z of each value against the EWMA moments of the values *before* it; then the moments
    take the value in. The rate is max(alpha, 1/n) (plain running moments during warm-up, then an EWMA); z is 0
    while fewer than `warmup` values were seen and for non-finite values (which are skipped); z is clipped to
    [lo, hi]; std = sqrt(var) + min_std + rel_std |mean|."""

    def __init__(self, alpha: float, warmup: int, lo: float, hi: float, min_std: float, rel_std: float,
                 mean: np.ndarray, var: np.ndarray, n: np.ndarray) -> None:
        self.alpha, self.warmup, self.lo, self.hi = alpha, warmup, lo, hi
        self.min_std, self.rel_std = min_std, rel_std
        self.mean = np.array(mean, dtype=np.float64)  # [S, C]
        self.var = np.array(var, dtype=np.float64)
        self.n = np.array(n, dtype=np.int64)

    def step(self, idx: np.ndarray, x: np.ndarray) -> np.ndarray:
        """z [len(idx), C] of values x (row j: one reading of stream idx[j]); the moments are updated."""
        fin = np.isfinite(x)
        m, v, n = self.mean[idx], self.var[idx], self.n[idx]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # non-finite values are masked below
            zz = (x - m) / (np.sqrt(np.where(v > 0.0, v, 0.0)) + self.min_std + self.rel_std * np.abs(m))
            zz = np.where(zz < self.lo, self.lo, np.where(zz > self.hi, self.hi, zz))
            z = np.where(fin & (n >= self.warmup) & (n > 0), zz, 0.0)
            n1 = n + fin
            inv = 1.0 / n1
            a = np.where(self.alpha > inv, self.alpha, inv)
            d = x - m
            m1, v1 = m + a * d, (1.0 - a) * (v + d * a * d)
        self.mean[idx] = np.where(fin, m1, m)
        self.var[idx] = np.where(fin, v1, v)
        self.n[idx] = n1
        return z

    def run(self, offsets: np.ndarray, x: np.ndarray) -> np.ndarray:
        """z [N, C] of values [N, C] laid out by `offsets` (stream i, state row i: rows offsets[i]:offsets[i+1]),
        stepped position by position; a single stream is offsets [0, T]."""
        off = np.asarray(offsets, dtype=np.int64)
        starts, lengths = off[:-1], np.diff(off)
        out = np.zeros(x.shape)
        for t in range(int(lengths.max()) if lengths.size else 0):
            idx = np.flatnonzero(lengths > t)
            rows = starts[idx] + t
            out[rows] = self.step(idx, x[rows])
        return out


class LikelihoodColumns:
    """HTM-style anomaly likelihood per stream: the mean m of the last `short` raw scores against their long-run
    EWMA distribution (mu, sigma; rate max(alpha, 1/n), updated after scoring): Q = tail((m - mu) / sigma), score =
    NAB's log scale of Q, likelihood = 1 - Q; 0 for the first `warmup` scores. Non-finite raw scores are skipped.

    State columns (`block`): mean, var, count, window length, then the window padded with zeros to `short`.
    """

    def __init__(self, short: int, alpha: float, warmup: int, min_std: float, rel_std: float,
                 block: np.ndarray) -> None:
        self.short, self.alpha, self.warmup, self.min_std, self.rel_std = short, alpha, warmup, min_std, rel_std
        block = np.asarray(block, dtype=np.float64).reshape(-1, 4 + short)
        self.mean, self.var = block[:, 0].copy(), block[:, 1].copy()
        self.n, self.k = block[:, 2].astype(np.int64), block[:, 3].astype(np.int64)
        self.columns = np.arange(short)[None, :]
        self.recent = block[:, 4:].copy()
        self.recent[self.columns >= self.k[:, None]] = 0.0  # past each window: zeros, as a fresh array
        self._rows: list[np.ndarray] = []
        self._z: list[np.ndarray] = []

    def step(self, idx: np.ndarray, rows: np.ndarray, raw: np.ndarray) -> None:
        """Take raw score raw[j] (output row rows[j]) into stream idx[j]'s likelihood."""
        finite = np.isfinite(raw)
        if not finite.all():
            idx, rows, raw = idx[finite], rows[finite], raw[finite]
        short = self.short
        full = idx[self.k[idx] >= short]
        if full.size:
            self.recent[full, :-1] = self.recent[full, 1:]
        k = np.minimum(self.k[idx] + 1, short)
        self.k[idx] = k
        self.recent[idx, k - 1] = raw
        # past each window the columns hold zeros (set in __init__, kept by the shift and the write above), which
        # add +0.0: the sum, left to right, over the window alone
        mr = np.add.accumulate(self.recent[idx], axis=1)[:, -1] / k
        mu, var, nn = self.mean[idx], self.var[idx], self.n[idx]
        warm = nn >= self.warmup
        if warm.any():  # scored all at once in `scores`
            sd = np.sqrt(np.maximum(var[warm], 0.0)) + self.min_std + self.rel_std * np.abs(mu[warm])
            self._rows.append(rows[warm])
            self._z.append((mr[warm] - mu[warm]) / sd)
        nn = nn + 1
        inv = 1.0 / nn
        a = np.where(self.alpha >= inv, self.alpha, inv)
        d = mr - mu
        self.mean[idx] = mu + a * d
        self.var[idx] = (1.0 - a) * (var + d * a * d)
        self.n[idx] = nn

    def run(self, raw: np.ndarray) -> None:
        """One stream's raw scores [T], reading by reading (a batch of one: the state is row 0, rows are t)."""
        first = np.zeros(1, dtype=np.int64)
        for t in range(raw.shape[0]):
            self.step(first, np.array([t]), raw[t:t + 1])

    def scores(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(log-likelihood score, likelihood 1 - Q) of every row stepped; 0 during warm-up and where skipped."""
        score, lik = np.zeros(n_rows), np.zeros(n_rows)
        if self._rows:
            rows, q = np.concatenate(self._rows), tail_probabilities(np.concatenate(self._z))
            score[rows] = _log_scale(q)
            lik[rows] = 1.0 - q
        return score, lik

    def block(self) -> np.ndarray:
        """The state columns back in the flat layout."""
        return np.concatenate([self.mean[:, None], self.var[:, None], self.n[:, None], self.k[:, None],
                               self.recent], axis=1)
