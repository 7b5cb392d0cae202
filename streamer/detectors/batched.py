"""The anomaly pipeline for many streams at once: the one definition of its arithmetic.

The per-stream states are gathered into columns (streamer/detectors/columns.py), the readings are stepped
position by position (the t-th reading of every stream that has one, together), and the states are written
back: the seasonal lookup, forecast-error z-scores, their root mean square, and the error and value views'
likelihoods. `AnomalyPipeline.score` is a batch of one stream, so a stream's results do not depend on the
streams beside it or on how its readings were chunked (tests check both). Telemanom's threshold
(STREAMER_DETECTORS__DT_WINDOW > 0), which alerts never use, is stepped stream by stream afterwards; the alert
lifecycle runs per stream, but only for streams with an open alert, a damped score, or a score at the alert level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.detectors.pipeline import AnomalyPipeline


@dataclass
class Scored:
    """Per row of a batch: final score, its error view's likelihood and raw score, channel z, |error|; Telemanom's
    ratio, flag and threshold (NaN when off); 1.0 where an alert fired. Per stream: its alert messages."""

    score: np.ndarray
    likelihood: np.ndarray
    raw: np.ndarray
    channels: np.ndarray
    error: np.ndarray
    ratio: np.ndarray
    flag: np.ndarray
    threshold: np.ndarray
    fired: np.ndarray
    alerts: list[list[dict[str, Any]]] = field(default_factory=list)


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
        for key, season in (("season", pipeline.season), ("season_also", pipeline.season_also)):
            if season is not None:
                memories = [st.setdefault(key, season.init_state()) for st in states]
                err = np.fmin(err, season.errors(memories, off, ts, x))  # NaN: no seasonal reading there
    return err


def _score_rows(pipeline: AnomalyPipeline, states: list[dict[str, Any]], off: np.ndarray, ts: np.ndarray,
                x: np.ndarray, f: np.ndarray) -> Scored:
    """Every row's scores (alerts not yet run); the states' flat rows are rewritten."""
    S, C, cfg = len(states), pipeline.n_channels, pipeline.config
    starts, lengths = off[:-1], np.diff(off)
    flat = np.array([pipeline.flatten(st) for st in states], dtype=np.float64).reshape(S, pipeline.flat_width())
    errors = pipeline.error.columns(mean=flat[:, C:2 * C], var=flat[:, 2 * C:3 * C], n=flat[:, 3 * C:4 * C])
    w = 4 + pipeline.lik.short
    lik = pipeline.lik.columns(flat[:, 4 * C:4 * C + w])
    vlik = pipeline.vlik.columns(flat[:, 4 * C + w:]) if pipeline.vlik is not None else None
    err = _errors_of_rows(pipeline, states, flat[:, :C], off, ts, x, f)
    dev = np.sqrt(np.mean(np.square(x), axis=1)) if (cfg.value_weight > 0 or vlik is not None) else None
    z = np.zeros_like(err)
    raw = np.zeros(x.shape[0])
    for t in range(int(lengths.max()) if S else 0):
        idx = np.flatnonzero(lengths > t)
        rows = starts[idx] + t
        z[rows] = errors.step(idx, err[rows])
        r = np.sqrt(np.mean(z[rows] ** 2, axis=1))
        if cfg.value_weight > 0:
            r = np.maximum(r, cfg.value_weight * dev[rows])
        raw[rows] = r
        lik.step(idx, rows, r)
        if vlik is not None:
            vlik.step(idx, rows, dev[rows])
    final, likelihood = lik.scores(x.shape[0])
    if vlik is not None:
        final = np.maximum(final, vlik.scores(x.shape[0])[0])
    # the new flat rows of the streams that had readings (a stream's state is one list: cheap to store, to copy
    # and to encode in its snapshot); a forecast that is not finite is no forecast (NaN)
    last = f[np.maximum(off[1:] - 1, 0)]
    parts = [np.where(np.isfinite(last), last, np.nan), errors.mean, errors.var, errors.n, lik.block()]
    new = np.concatenate(parts + ([vlik.block()] if vlik is not None else []), axis=1)
    for st, n_rows, row in zip(states, lengths.tolist(), new.tolist(), strict=True):
        if n_rows:
            st["v"] = row
            for part in ("error", "lik", "vlik"):  # a nested state (a new stream's, or one expanded for reading)
                st.pop(part, None)
    off_rows = np.full(x.shape[0], np.nan)
    return Scored(final, likelihood, raw, z, err, off_rows, off_rows.copy(), off_rows.copy(), np.zeros(x.shape[0]))


def _dynamic_thresholds(pipeline: AnomalyPipeline, states: list[dict[str, Any]], off: np.ndarray, ts: np.ndarray,
                        out: Scored) -> None:
    """Telemanom's threshold on each stream's root mean square error, stream by stream (when it is on)."""
    dt = pipeline.dt
    if dt is None:
        return
    rms = np.sqrt(np.mean(out.error ** 2, axis=1))
    for i, st in enumerate(states):
        a, b = int(off[i]), int(off[i + 1])
        if b > a:
            if st.get("dt") is None:
                st["dt"] = dt.init_state()
            got = dt.step(st["dt"], ts[a:b], rms[a:b])
            out.ratio[a:b], out.flag[a:b], out.threshold[a:b] = got["ratio"], got["flag"], got["threshold"]


def score_batch(pipeline: AnomalyPipeline, states: list[dict[str, Any]], streams: list[str], offsets: np.ndarray,
                ts: np.ndarray, x_norm: np.ndarray, forecast: np.ndarray) -> Scored:
    """Scores and alerts for readings [N, C] laid out by `offsets` (stream i: rows offsets[i]:offsets[i+1]).

    `states` are the streams' pipeline states (updated in place); `x_norm` the normalised readings and
    `forecast[r]` the one-step forecast made at row r, in the same units.
    """
    off = np.asarray(offsets, dtype=np.int64)
    C = pipeline.n_channels
    x = np.asarray(x_norm, dtype=np.float64).reshape(-1, C)
    f = np.asarray(forecast, dtype=np.float64).reshape(-1, C)
    times = np.asarray(ts, dtype=np.int64).reshape(-1)
    out = _score_rows(pipeline, states, off, times, x, f)
    _dynamic_thresholds(pipeline, states, off, times, out)
    S, starts, lengths = len(states), off[:-1], np.diff(off)
    out.alerts = [[] for _ in range(S)]
    hot = np.zeros(S, dtype=bool)
    at_level = out.score >= pipeline.config.alert_on
    if at_level.any():
        hot |= np.add.reduceat(at_level, np.minimum(starts, len(out.score) - 1)) > 0
        hot &= lengths > 0
    for i, st in enumerate(states):
        if hot[i] or st["damp"] or st["alert"]["open"] is not None:
            a, b = int(off[i]), int(off[i + 1])
            out.alerts[i] = pipeline.alert_rows(st, times[a:b], out.score[a:b], out.channels[a:b],
                                                stream=streams[i])  # damps out.score in place
            out.fired[a:b] = fired_rows(times[a:b], out.alerts[i])
    return out


def fired_rows(ts: np.ndarray, alerts: list[dict[str, Any]]) -> np.ndarray:
    """1.0 at the readings where one of `alerts` fired, else 0.0: binary detections at the pipeline's threshold."""
    onsets = {int(m["start_ts"]) for m in alerts if m["state"] == "firing"}
    return np.isin(np.asarray(ts, dtype=np.int64), np.array(sorted(onsets), dtype=np.int64)).astype(np.float64)


def score_streams(pipeline: AnomalyPipeline, states: list[dict[str, Any]], streams: list[str],
                  offsets: np.ndarray, ts: np.ndarray, x_norm: np.ndarray,
                  forecast: np.ndarray, scored: dict[str, np.ndarray] | None = None) -> list[list[dict[str, Any]]]:
    """Alerts per stream (the daemon's call): `score_batch`; a `scored` dict receives, by row, 'error' [N, C]
    (|reading - the forecast made for it|, NaN where there was none) and 'score' [N]."""
    out = score_batch(pipeline, states, streams, offsets, ts, x_norm, forecast)
    if scored is not None:
        scored["error"], scored["score"] = out.error, out.score
    return out.alerts
