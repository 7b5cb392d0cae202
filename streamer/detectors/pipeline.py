"""The anomaly pipeline of one stream: normalise -> (engine forecasts) -> error z -> likelihood -> alerts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from streamer.detectors.alerts import AlertLifecycle
from streamer.detectors.base import Detector
from streamer.detectors.forecast_error import ForecastErrorScorer
from streamer.detectors.likelihood import AnomalyLikelihood
from streamer.detectors.normalise import OnlineNormaliser
from streamer.detectors.seasonal import SeasonalMemory
from streamer.detectors.thresholds import DynamicThreshold


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of the anomaly pipeline (one configuration for every stream); rates in readings."""

    norm_halflife: float = 5000.0  # input normalisation adapts at this EWMA half-life
    error_halflife: float = 8000.0  # forecast-error mean/variance half-life
    error_warmup: int = 50  # readings before error z-scores are emitted
    error_zmax: float = 50.0  # error z-scores are clipped to [0, error_zmax]
    value_weight: float = 0.0  # raw score = max(error z, value_weight * |normalised reading|) (0: errors only)
    season_ms: int = 0  # error = min(|x - forecast|, |x - x one period earlier|), e.g. DAY_MS (0: forecast only)
    season_max: int = 1500  # readings kept for the seasonal view (one per (period + slack) / (season_max - 1) ms)
    season_slack_ms: int = 0  # readings this close to t - period count as one period earlier too (0: the nearest)
    season_also_ms: int = 0  # a second seasonal period, e.g. WEEK_MS (0: none) ...
    season_also_max: int = 350  # ... from a memory of this many readings (kept as season_max's)
    value_short: int = 0  # value view: likelihood of the mean |normalised reading| over this many, e.g. 4 (0: off)
    short: int = 8  # likelihood: short window of raw scores
    long_halflife: float = 8000.0  # likelihood: long-run distribution half-life (the "new normal" rate)
    likelihood_warmup: int = 200  # readings before the likelihood is emitted (score 0 before)
    dt_window: int = 1000  # Telemanom threshold: trailing window of smoothed errors (0: off)
    dt_span: float = 30.0  # Telemanom threshold: EWMA span of the smoothing
    dt_every: int = 50  # Telemanom threshold: recomputed every this many readings
    alert_on: float = 0.5  # own threshold on the final score (alerts fire at or above)
    alert_off: float = 0.3  # alerts resolve below this ...
    resolve_after: int = 10  # ... for this many readings
    suppress: int = 100  # final score damped for this many readings after an alert fired (0: off)
    damp: float = 0.0  # factor on the final score while damped

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for reports)."""
        return asdict(self)


class AnomalyPipeline(Detector):
    """Composite detector; its state is {'norm', 'error', 'lik', 'dt', 'alert', 'damp'} of its parts' states.

    `prepare` normalises new readings for the model (call before the engine), `score` turns the model's
    one-step forecasts (normalised units) into scores and alerts (call after it).

    Two views of each reading, each turned into a log-likelihood in [0, 1] against its own long-run history:
    - error view: the z of the forecast error, where the error is the smaller of the model's and the
      seasonal-naive forecasts' (the values one `season_ms` and one `season_also_ms` earlier, within
      `season_slack_ms`; each memory keeps one reading per slot of its period / its size, so that it reaches one
      period back at any sampling rate): what yesterday or last week explains is not new;
    - value view (`value_short` > 0): the mean |normalised reading| over the last `value_short` readings,
      i.e. how far the value itself is from the stream's running distribution (spikes, level shifts).
    The final 'score' is the larger of the two (the most surprising view), damped for `suppress` readings
    after an alert fired, so that one anomaly is reported once.
    """

    score_range = (0.0, 1.0)

    def __init__(self, n_channels: int = 1, config: PipelineConfig | None = None, model: str = "",
                 version: str = "", channel_names: list[str] | None = None) -> None:
        self.n_channels = n_channels
        self.config = cfg = config or PipelineConfig()
        self.norm = OnlineNormaliser(n_channels, halflife=cfg.norm_halflife)
        self.error = ForecastErrorScorer(n_channels, halflife=cfg.error_halflife, warmup=cfg.error_warmup,
                                         zmax=cfg.error_zmax)
        self.lik = AnomalyLikelihood(short=cfg.short, halflife=cfg.long_halflife, warmup=cfg.likelihood_warmup)
        self.vlik = (AnomalyLikelihood(short=cfg.value_short, halflife=cfg.long_halflife,
                                       warmup=cfg.likelihood_warmup) if cfg.value_short > 0 else None)
        self.season = (SeasonalMemory.spanning(n_channels, cfg.season_ms, cfg.season_max, cfg.season_slack_ms)
                       if cfg.season_ms > 0 else None)
        self.season_also = (SeasonalMemory.spanning(n_channels, cfg.season_also_ms, cfg.season_also_max,
                                                    cfg.season_slack_ms) if cfg.season_also_ms > 0 else None)
        self.dt = (DynamicThreshold(window=cfg.dt_window, span=cfg.dt_span, every=cfg.dt_every,
                                    warmup=cfg.likelihood_warmup) if cfg.dt_window > 0 else None)
        self.alerts = AlertLifecycle("anomaly", on=cfg.alert_on, off=cfg.alert_off, resolve_after=cfg.resolve_after,
                                     critical=max(cfg.alert_on, 0.8), channel_names=channel_names, model=model,
                                     version=version)

    def init_state(self, n_channels: int | None = None) -> dict[str, Any]:
        """States of all parts."""
        c = n_channels or self.n_channels
        # Parts that are switched off hold no state (it is in every changelog record of every stream); the
        # optional ones are created when first used.
        state = {"error": self.error.init_state(c), "lik": self.lik.init_state(), "alert": self.alerts.init_state(),
                 "damp": 0}
        if self.vlik is not None:
            state["vlik"] = self.vlik.init_state()
        if self.season is not None:
            state["season"] = self.season.init_state()
        if self.season_also is not None:
            state["season_also"] = self.season_also.init_state()
        if self.dt is not None:
            state["dt"] = self.dt.init_state()
        return state

    # -- the flat form the daemon keeps (see detectors/batched.py) --------------------------------------
    def flat_width(self) -> int:
        """Length of the flat row: pred, error mean, var and count per channel; then per likelihood (the error
        view's, and the value view's when on) its mean, var, count and window length and its window padded."""
        width = 4 * self.n_channels + 4 + self.lik.short
        return width + (4 + self.vlik.short if self.vlik is not None else 0)

    def flatten(self, state: dict[str, Any]) -> list[float]:
        """The error and likelihood parts of a state as one row of floats (NaN for a missing forecast).

        A state written for another number of channels (by an earlier model) cannot be read: it is reset in
        place to a fresh one, whose row is returned. A row written while the value view was off keeps its error
        view and gets a fresh value view.
        """
        row = state.get("v")
        c, base = self.n_channels, 4 * self.n_channels + 4 + self.lik.short
        if row is None and len(state["error"]["mean"]) == c:
            es = state["error"]
            pred = es["pred"] if es["pred"] is not None else [None] * c
            row = [*(math.nan if v is None else float(v) for v in pred), *map(float, es["mean"]),
                   *map(float, es["var"]), *map(float, es["n"]), *self.lik.row(state["lik"])]
            if self.vlik is not None:
                row += self.vlik.row(state.get("vlik") or self.vlik.init_state())
        elif row is not None and self.vlik is not None and len(row) == base:  # written with the value view off
            row = [*row, *self.vlik.row(self.vlik.init_state())]
        if row is None or len(row) != self.flat_width():
            state.clear()
            state.update(self.init_state())
            return self.flatten(state)
        return row

    def expand(self, state: dict[str, Any]) -> dict[str, Any]:
        """Turn a flat state back into the nested parts `score` steps (in place; returned for convenience)."""
        if "v" not in state:
            return state
        row = self.flatten(state)  # a row that does not fit resets the state to a fresh nested one
        if state.pop("v", None) is not None:
            c = self.n_channels
            state["error"] = {"pred": [v if math.isfinite(v) else None for v in row[:c]], "mean": row[c:2 * c],
                              "var": row[2 * c:3 * c], "n": [int(v) for v in row[3 * c:4 * c]]}
            state["lik"] = self.lik.state_of(row[4 * c:4 * c + 4 + self.lik.short])
            if self.vlik is not None:
                state["vlik"] = self.vlik.state_of(row[4 * c + 4 + self.lik.short:])
        return state

    def prepare(self, state: dict[str, Any], ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Model input: readings normalised with the stream's stats so far, float32 [T, C]."""
        return self.norm.step(state.setdefault("norm", self.norm.init_state(self.n_channels)), ts, values)

    def prepare_streams(self, states: list[dict[str, Any]], offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
        """`prepare` for many streams at once: readings [N, C] laid out by `offsets`, stream i's state states[i]."""
        norms = [st.setdefault("norm", self.norm.init_state(self.n_channels)) for st in states]
        return self.norm.step_streams(norms, offsets, values)

    def score(self, state: dict[str, Any], ts: np.ndarray, x_norm: np.ndarray, forecast: np.ndarray,
              stream: str = "") -> dict[str, Any]:
        """Scores for normalised readings [T, C] and the model's next-step forecasts [T, C] of the same rows: the
        batched pipeline (detectors/batched.py) over a batch of this one stream."""
        from streamer.detectors.batched import score_batch  # it builds on this module

        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        out = score_batch(self, [state], [stream], np.array([0, ts.shape[0]]), ts, x_norm, forecast)
        self.expand(state)  # the nested form, as a single stream's callers read it
        return {"score": out.score, "likelihood": out.likelihood, "raw": out.raw, "channels": out.channels,
                "error": out.error, "ratio": out.ratio, "flag": out.flag, "threshold": out.threshold,
                "alerts": out.alerts[0], "fired": out.fired}

    def alert_rows(self, state: dict[str, Any], ts: np.ndarray, final: np.ndarray, channels: np.ndarray,
                   stream: str = "") -> list[dict[str, Any]]:
        """Damping and the alert lifecycle over final scores [T] (damped in place); the alert messages."""
        cfg = self.config
        damp = int(state["damp"])
        alerts: list[dict[str, Any]] = []
        first = 0
        if damp == 0 and state["alert"]["open"] is None:
            # Nothing is open or damped: rows below the alert level change nothing, so start at the first
            # row at or above it (usually there is none).
            above = np.flatnonzero(final >= cfg.alert_on)
            first = int(above[0]) if above.size else final.shape[0]
        for t in range(first, final.shape[0]):  # damping depends on past alerts only, so it runs row by row
            if damp > 0:
                final[t] *= cfg.damp
                damp -= 1
            fired = self.alerts.step(state["alert"], ts[t : t + 1], final[t : t + 1], channels[t : t + 1],
                                     stream=stream)
            if any(m["state"] == "firing" for m in fired):
                damp = cfg.suppress
            alerts.extend(fired)
        state["damp"] = damp
        return alerts
