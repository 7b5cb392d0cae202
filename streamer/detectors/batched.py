"""The serving anomaly pipeline for many streams at once: the same arithmetic, vectorised across streams.

`AnomalyPipeline.score` handles one stream; calling it for each of thousands of streams in a batch costs
tens of numpy calls per stream. Here the per-stream states are gathered into arrays, the readings are
stepped position by position (the t-th reading of every stream that has one, together), and the states
are written back: forecast-error z-scores, their root mean square, and the anomaly likelihood, with the
very operations of `ewma_zscores` and `AnomalyLikelihood.step` in the same order, so the results are
bitwise those of the per-stream path (a test checks it). The alert lifecycle still runs per stream, but
only for streams with an open alert, a damped score, or a score at the alert level.

Only the views the daemon serves are vectorised (forecast error + likelihood: no seasonal or value view,
no Telemanom threshold); any other configuration goes through `AnomalyPipeline.score` stream by stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.detectors.likelihood import log_tail_scores
from streamer.detectors.pipeline import AnomalyPipeline


def vectorised(pipeline: AnomalyPipeline) -> bool:
    """Whether `score_streams` can step this pipeline's configuration across streams."""
    cfg = pipeline.config
    return (pipeline.season is None and pipeline.vlik is None and pipeline.dt is None and cfg.value_weight <= 0
            and pipeline.lik.short >= 1)


def score_streams(pipeline: AnomalyPipeline, states: list[dict[str, Any]], streams: list[str],
                  offsets: np.ndarray, ts: np.ndarray, x_norm: np.ndarray,
                  forecast: np.ndarray, scored: dict[str, np.ndarray] | None = None) -> list[list[dict[str, Any]]]:
    """Alerts per stream for readings [N, C] laid out by `offsets` (stream i: rows offsets[i]:offsets[i+1]).

    `states` are the streams' pipeline states (updated in place); `forecast[r]` is the one-step forecast
    made at row r. Equal to calling `pipeline.score` for each stream in turn. A `scored` dict receives, by
    row, 'error' [N, C] (|reading - the forecast made for it|, NaN where there was none) and 'score' [N].
    """
    if not vectorised(pipeline):
        out, parts = [], []
        for i, st in enumerate(states):
            a, b = int(offsets[i]), int(offsets[i + 1])
            res = pipeline.score(st, ts[a:b], x_norm[a:b], forecast[a:b], stream=streams[i])
            out.append(res["alerts"])
            parts.append((res["error"], res["score"]))
        if scored is not None:
            C = pipeline.n_channels
            scored["error"] = np.concatenate([e for e, _ in parts]) if parts else np.zeros((0, C))
            scored["score"] = np.concatenate([s for _, s in parts]) if parts else np.zeros(0)
        return out
    S = len(states)
    off = np.asarray(offsets, dtype=np.int64)
    starts, lengths = off[:-1], np.diff(off)
    C = pipeline.n_channels
    x = np.asarray(x_norm, dtype=np.float64).reshape(-1, C)
    f = np.asarray(forecast, dtype=np.float64).reshape(-1, C)
    er, lk = pipeline.error, pipeline.lik
    # gather: one flat row of floats per stream (AnomalyPipeline.flatten), columns sliced out of one array
    W = pipeline.flat_width()
    rows = np.array([pipeline.flatten(st) for st in states], dtype=np.float64).reshape(S, W)
    prev = rows[:, :C]
    e_mean, e_var = rows[:, C:2 * C].copy(), rows[:, 2 * C:3 * C].copy()
    e_n = rows[:, 3 * C:4 * C].astype(np.int64)
    l_mean, l_var = rows[:, 4 * C].copy(), rows[:, 4 * C + 1].copy()
    l_n, r_len = rows[:, 4 * C + 2].astype(np.int64), rows[:, 4 * C + 3].astype(np.int64)
    short = lk.short
    recent = rows[:, 4 * C + 4:].copy()
    recent[np.arange(short)[None, :] >= r_len[:, None]] = 0.0  # past each window: zeros, as a fresh array

    # the forecast for row r was made at row r - 1 (at a stream's first row: the carried one)
    pred = np.empty_like(f)
    pred[1:] = f[:-1]
    nonempty = lengths > 0
    pred[starts[nonempty]] = prev[nonempty]
    with np.errstate(invalid="ignore"):
        err = np.abs(x - pred)
    z = np.zeros_like(err)
    final = np.zeros(x.shape[0])
    lo, hi = 0.0, er.zmax
    columns = np.arange(short)[None, :]
    tail_rows: list[np.ndarray] = []
    tail_z: list[np.ndarray] = []
    for t in range(int(lengths.max()) if S else 0):
        idx = np.flatnonzero(lengths > t)
        rows = starts[idx] + t
        e = err[rows]
        fin = np.isfinite(e)
        m, v, n = e_mean[idx], e_var[idx], e_n[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            zz = (e - m) / (np.sqrt(np.where(v > 0.0, v, 0.0)) + er.min_std)
        zz = np.where(zz < lo, lo, np.where(zz > hi, hi, zz))
        z[rows] = np.where(fin & (n >= er.warmup) & (n > 0), zz, 0.0)
        n1 = n + fin
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / n1
            a = np.where(er.alpha > inv, er.alpha, inv)
            d = e - m
            m1, v1 = m + a * d, (1.0 - a) * (v + d * a * d)
        e_mean[idx] = np.where(fin, m1, m)
        e_var[idx] = np.where(fin, v1, v)
        e_n[idx] = n1
        # likelihood of the root mean square z (always finite here)
        raw = np.sqrt(np.mean(z[rows] ** 2, axis=1))
        full = r_len[idx] >= short
        if full.any():
            shift = idx[full]
            recent[shift, :-1] = recent[shift, 1:]
        r_len[idx] = np.minimum(r_len[idx] + 1, short)
        recent[idx, r_len[idx] - 1] = raw
        k = r_len[idx]
        window = recent[idx]
        window[columns >= k[:, None]] = 0.0  # past each stream's window: adds +0.0, as the per-stream sum
        mr = np.add.accumulate(window, axis=1)[:, -1] / k  # left to right, as sum() of the per-stream path
        mu, var, nn = l_mean[idx], l_var[idx], l_n[idx]
        warm = nn >= lk.warmup
        if warm.any():
            sd = np.sqrt(np.maximum(var[warm], 0.0)) + lk.min_std + lk.rel_std * np.abs(mu[warm])
            tail_rows.append(rows[warm])  # scored all at once after the loop
            tail_z.append((mr[warm] - mu[warm]) / sd)
        nn = nn + 1
        inv = 1.0 / nn
        a = np.where(lk.alpha >= inv, lk.alpha, inv)
        d = mr - mu
        l_mean[idx] = mu + a * d
        l_var[idx] = (1.0 - a) * (var + d * a * d)
        l_n[idx] = nn
    if tail_rows:
        final[np.concatenate(tail_rows)] = log_tail_scores(np.concatenate(tail_z))

    # scatter: the new rows of the streams that had readings (a stream's state is one list: cheap to store,
    # to copy and to encode in its snapshot); a forecast that is not finite is no forecast (NaN)
    last = f[np.maximum(off[1:] - 1, 0)]
    new = np.concatenate([np.where(np.isfinite(last), last, np.nan), e_mean, e_var, e_n, l_mean[:, None],
                          l_var[:, None], l_n[:, None], r_len[:, None], recent], axis=1)
    for st, n_rows, row in zip(states, lengths.tolist(), new.tolist(), strict=True):
        if n_rows:
            st["v"] = row
            if "error" in st:  # a nested state (a new stream's, or one written by the per-stream path)
                del st["error"], st["lik"]

    # alerts: only where something can happen
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
