"""The serving anomaly pipeline for many streams at once: the same arithmetic, vectorised across streams.

`AnomalyPipeline.score` handles one stream; calling it for each of thousands of streams in a batch costs
tens of numpy calls per stream. Here the per-stream states are gathered into arrays, the readings are
stepped position by position (the t-th reading of every stream that has one, together), and the states
are written back: the seasonal lookup, forecast-error z-scores, their root mean square, and the error and
value views' likelihoods, with the very operations of `ewma_zscores` and `AnomalyLikelihood.step` in the
same order, so the results are bitwise those of the per-stream path (a test checks it). The alert lifecycle
still runs per stream, but only for streams with an open alert, a damped score, or a score at the alert level.

Telemanom's threshold (STREAMER_DETECTORS__DT_WINDOW > 0) is not vectorised: with it on, every stream goes
through `AnomalyPipeline.score` in turn (about 40x slower per reading); alerts never use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.detectors.likelihood import AnomalyLikelihood, log_tail_scores
from streamer.detectors.pipeline import AnomalyPipeline
from streamer.detectors.seasonal import seasonal_lookup


def vectorised(pipeline: AnomalyPipeline) -> bool:
    """Whether `score_streams` can step this pipeline's configuration across streams."""
    return pipeline.dt is None and pipeline.lik.short >= 1 and (pipeline.vlik is None or pipeline.vlik.short >= 1)


class _Likelihoods:
    """One AnomalyLikelihood's state for a batch of streams, as columns, stepped one reading position at a time."""

    def __init__(self, lik: AnomalyLikelihood, block: np.ndarray) -> None:
        # block [S, 4 + short]: mean, var, count, window length, window padded (see AnomalyPipeline.flatten)
        self.lik = lik
        self.mean, self.var = block[:, 0].copy(), block[:, 1].copy()
        self.n, self.k = block[:, 2].astype(np.int64), block[:, 3].astype(np.int64)
        self.columns = np.arange(lik.short)[None, :]
        self.recent = block[:, 4:].copy()
        self.recent[self.columns >= self.k[:, None]] = 0.0  # past each window: zeros, as a fresh array
        self._rows: list[np.ndarray] = []
        self._z: list[np.ndarray] = []

    def step(self, idx: np.ndarray, rows: np.ndarray, raw: np.ndarray) -> None:
        """Take raw score raw[j] (row rows[j]) into stream idx[j]'s likelihood; non-finite scores are skipped."""
        finite = np.isfinite(raw)
        if not finite.all():
            idx, rows, raw = idx[finite], rows[finite], raw[finite]
        lk, short = self.lik, self.lik.short
        full = idx[self.k[idx] >= short]
        if full.size:
            self.recent[full, :-1] = self.recent[full, 1:]
        k = np.minimum(self.k[idx] + 1, short)
        self.k[idx] = k
        self.recent[idx, k - 1] = raw
        window = self.recent[idx]
        window[self.columns >= k[:, None]] = 0.0  # adds +0.0, as the per-stream sum over the shorter window
        mr = np.add.accumulate(window, axis=1)[:, -1] / k  # left to right, as sum() of the per-stream path
        mu, var, nn = self.mean[idx], self.var[idx], self.n[idx]
        warm = nn >= lk.warmup
        if warm.any():  # scored all at once in `scores`
            sd = np.sqrt(np.maximum(var[warm], 0.0)) + lk.min_std + lk.rel_std * np.abs(mu[warm])
            self._rows.append(rows[warm])
            self._z.append((mr[warm] - mu[warm]) / sd)
        nn = nn + 1
        inv = 1.0 / nn
        a = np.where(lk.alpha >= inv, lk.alpha, inv)
        d = mr - mu
        self.mean[idx] = mu + a * d
        self.var[idx] = (1.0 - a) * (var + d * a * d)
        self.n[idx] = nn

    def scores(self, n_rows: int) -> np.ndarray:
        """The log-likelihood score of every row stepped (0 during warm-up and where skipped)."""
        out = np.zeros(n_rows)
        if self._rows:
            out[np.concatenate(self._rows)] = log_tail_scores(np.concatenate(self._z))
        return out

    def block(self) -> np.ndarray:
        """The state columns back in the flat layout."""
        return np.concatenate([self.mean[:, None], self.var[:, None], self.n[:, None], self.k[:, None],
                               self.recent], axis=1)


class _Errors:
    """The forecast-error z-scorer's state (per channel EWMA mean, var, count) for a batch of streams."""

    def __init__(self, pipeline: AnomalyPipeline, rows: np.ndarray) -> None:
        c = pipeline.n_channels
        self.scorer = pipeline.error
        self.mean, self.var = rows[:, c:2 * c].copy(), rows[:, 2 * c:3 * c].copy()
        self.n = rows[:, 3 * c:4 * c].astype(np.int64)

    def step(self, idx: np.ndarray, err: np.ndarray) -> np.ndarray:
        """z [len(idx), C] of errors err (one row per stream idx[j]), as `ewma_zscores`; updates the moments."""
        er = self.scorer
        fin = np.isfinite(err)
        m, v, n = self.mean[idx], self.var[idx], self.n[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            zz = (err - m) / (np.sqrt(np.where(v > 0.0, v, 0.0)) + er.min_std)
        zz = np.where(zz < 0.0, 0.0, np.where(zz > er.zmax, er.zmax, zz))
        z = np.where(fin & (n >= er.warmup) & (n > 0), zz, 0.0)
        n1 = n + fin
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / n1
            a = np.where(er.alpha > inv, er.alpha, inv)
            d = err - m
            m1, v1 = m + a * d, (1.0 - a) * (v + d * a * d)
        self.mean[idx] = np.where(fin, m1, m)
        self.var[idx] = np.where(fin, v1, v)
        self.n[idx] = n1
        return z


def _errors_of_rows(pipeline: AnomalyPipeline, states: list[dict[str, Any]], prev: np.ndarray, off: np.ndarray,
                    ts: np.ndarray, x: np.ndarray, f: np.ndarray) -> np.ndarray:
    """|reading - the forecast made for it| [N, C], or the seasonal-naive forecast's error where that is smaller."""
    starts, lengths = off[:-1], np.diff(off)
    pred = np.empty_like(f)
    pred[1:] = f[:-1]  # the forecast for row r was made at row r - 1 (at a stream's first row: the carried one)
    nonempty = lengths > 0
    pred[starts[nonempty]] = prev[nonempty]
    with np.errstate(invalid="ignore"):
        err = np.abs(x - pred)
        if pipeline.season is not None:
            season = pipeline.season
            memories = [st.setdefault("season", season.init_state()) for st in states]
            alt = seasonal_lookup(memories, off, ts, x, season.period_ms, season.max_len)
            err = np.fmin(err, np.abs(x - alt))  # NaN alternative: the forecast's error
    return err


def _score_rows(pipeline: AnomalyPipeline, states: list[dict[str, Any]], off: np.ndarray, ts: np.ndarray,
                x: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(final score [N], channel z [N, C], error [N, C]) of every row; the states' flat rows are rewritten."""
    S, C, cfg = len(states), pipeline.n_channels, pipeline.config
    starts, lengths = off[:-1], np.diff(off)
    flat = np.array([pipeline.flatten(st) for st in states], dtype=np.float64).reshape(S, pipeline.flat_width())
    errors = _Errors(pipeline, flat)
    w = 4 + pipeline.lik.short
    lik = _Likelihoods(pipeline.lik, flat[:, 4 * C:4 * C + w])
    vlik = _Likelihoods(pipeline.vlik, flat[:, 4 * C + w:]) if pipeline.vlik is not None else None
    err = _errors_of_rows(pipeline, states, flat[:, :C], off, ts, x, f)
    dev = np.sqrt(np.mean(np.square(x), axis=1)) if (cfg.value_weight > 0 or vlik is not None) else None
    z = np.zeros_like(err)
    for t in range(int(lengths.max()) if S else 0):
        idx = np.flatnonzero(lengths > t)
        rows = starts[idx] + t
        z[rows] = errors.step(idx, err[rows])
        raw = np.sqrt(np.mean(z[rows] ** 2, axis=1))
        if cfg.value_weight > 0:
            raw = np.maximum(raw, cfg.value_weight * dev[rows])
        lik.step(idx, rows, raw)
        if vlik is not None:
            vlik.step(idx, rows, dev[rows])
    final = lik.scores(x.shape[0])
    if vlik is not None:
        final = np.maximum(final, vlik.scores(x.shape[0]))
    # the new flat rows of the streams that had readings (a stream's state is one list: cheap to store, to copy
    # and to encode in its snapshot); a forecast that is not finite is no forecast (NaN)
    last = f[np.maximum(off[1:] - 1, 0)]
    parts = [np.where(np.isfinite(last), last, np.nan), errors.mean, errors.var, errors.n, lik.block()]
    new = np.concatenate(parts + ([vlik.block()] if vlik is not None else []), axis=1)
    for st, n_rows, row in zip(states, lengths.tolist(), new.tolist(), strict=True):
        if n_rows:
            st["v"] = row
            for part in ("error", "lik", "vlik"):  # a nested state (a new stream's, or the per-stream path's)
                st.pop(part, None)
    return final, z, err


def _per_stream(pipeline: AnomalyPipeline, states: list[dict[str, Any]], streams: list[str], off: np.ndarray,
                ts: np.ndarray, x_norm: np.ndarray, forecast: np.ndarray,
                scored: dict[str, np.ndarray] | None) -> list[list[dict[str, Any]]]:
    """`score_streams` for configurations it does not vectorise: `AnomalyPipeline.score` for each stream."""
    out, parts = [], []
    for i, st in enumerate(states):
        a, b = int(off[i]), int(off[i + 1])
        res = pipeline.score(st, ts[a:b], x_norm[a:b], forecast[a:b], stream=streams[i])
        out.append(res["alerts"])
        parts.append((res["error"], res["score"]))
    if scored is not None:
        C = pipeline.n_channels
        scored["error"] = np.concatenate([e for e, _ in parts]) if parts else np.zeros((0, C))
        scored["score"] = np.concatenate([s for _, s in parts]) if parts else np.zeros(0)
    return out


def score_streams(pipeline: AnomalyPipeline, states: list[dict[str, Any]], streams: list[str],
                  offsets: np.ndarray, ts: np.ndarray, x_norm: np.ndarray,
                  forecast: np.ndarray, scored: dict[str, np.ndarray] | None = None) -> list[list[dict[str, Any]]]:
    """Alerts per stream for readings [N, C] laid out by `offsets` (stream i: rows offsets[i]:offsets[i+1]).

    `states` are the streams' pipeline states (updated in place); `forecast[r]` is the one-step forecast
    made at row r. Equal to calling `pipeline.score` for each stream in turn. A `scored` dict receives, by
    row, 'error' [N, C] (|reading - the forecast made for it|, NaN where there was none) and 'score' [N].
    """
    off = np.asarray(offsets, dtype=np.int64)
    if not vectorised(pipeline):
        return _per_stream(pipeline, states, streams, off, ts, x_norm, forecast, scored)
    C = pipeline.n_channels
    x = np.asarray(x_norm, dtype=np.float64).reshape(-1, C)
    f = np.asarray(forecast, dtype=np.float64).reshape(-1, C)
    final, z, err = _score_rows(pipeline, states, off, ts, x, f)
    # alerts: only where something can happen
    S, starts, lengths = len(states), off[:-1], np.diff(off)
    alerts: list[list[dict[str, Any]]] = [[] for _ in range(S)]
    hot = np.zeros(S, dtype=bool)
    at_level = final >= pipeline.config.alert_on
    if at_level.any():
        hot |= np.add.reduceat(at_level, np.minimum(starts, len(final) - 1)) > 0
        hot &= lengths > 0
    for i, st in enumerate(states):
        if hot[i] or st["damp"] or st["alert"]["open"] is not None:
            a, b = int(off[i]), int(off[i + 1])
            alerts[i] = pipeline.alert_rows(st, np.asarray(ts[a:b], dtype=np.int64), final[a:b], z[a:b],
                                            stream=streams[i])
    if scored is not None:
        scored["error"], scored["score"] = err, final  # final: damped in place by alert_rows
    return alerts
