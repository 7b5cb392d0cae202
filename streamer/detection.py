"""What the daemon derives from each engine step besides forecasts: anomaly alerts and events, per stream.

The detectors' state of a stream lives in its state-store extras (so it is in every changelog snapshot,
survives restarts and moves with its partition). This module only turns engine results into messages;
the service publishes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.config import DetectorsSettings, Settings
from streamer.detectors.batched import score_streams
from streamer.detectors.events import HysteresisEvents, SilenceDetector, event_probability
from streamer.detectors.pipeline import AnomalyPipeline, PipelineConfig
from streamer.detectors.seasonal import DAY_MS, WEEK_MS
from streamer.engine import StepResults
from streamer.errors import ConfigError
from streamer.models import value_head
from streamer.state import StateStore

if TYPE_CHECKING:
    from streamer.model_source import ServedModel

log = logging.getLogger(__name__)

# The product default, served and evaluated (`streamer eval nab`) alike: what `streamer eval nab --cv 5` chose on
# all development files (benchmarks/nab_cv.json): the forecast error against the smallest of the model's and the
# seasonal-naive forecasts' (the values a day and a week earlier, within half an hour, from memories of 300 and 350
# readings kept compactly in the stream's state), beside the value view, both scored for all streams at once.
# Telemanom's threshold is off: alerts never use it.
PRODUCT_PIPELINE = PipelineConfig(dt_window=0, season_ms=DAY_MS, season_max=300, season_slack_ms=30 * 60_000,
                                  season_also_ms=WEEK_MS, season_also_max=350, value_short=4, short=8,
                                  long_halflife=8000.0)


def pipeline_config(settings: DetectorsSettings, checkpoint: dict[str, Any] | None = None) -> PipelineConfig:
    """The anomaly pipeline, field by field: the STREAMER_DETECTORS__* setting, else the checkpoint's `detectors`
    metadata, else PRODUCT_PIPELINE. The daemon and `streamer eval nab` build theirs here, and nowhere else."""
    known = PRODUCT_PIPELINE.to_dict()
    saved = dict(checkpoint or {})
    unknown = sorted(set(saved) - set(known))
    if unknown:
        raise ConfigError(f"checkpoint metadata 'detectors': unknown fields {unknown} (known: {sorted(known)})")
    fields = {**known, **saved, **settings.overrides()}
    return PipelineConfig(**{k: type(known[k])(v) for k, v in fields.items()})


def stream_detectors(settings: Settings, served: ServedModel) -> StreamDetectors:
    """The detectors the daemon runs on a served model's outputs, as the settings and the checkpoint say."""
    from streamer.model_source import event_hysteresis

    o = settings.output
    on, off, run = event_hysteresis(settings, served)
    if o.anomalies and served.head is None:
        log.info("anomaly scoring off: the model has no forecast or reconstruction head", extra={
            "model": served.name, "heads": list(served.model.config.heads)})
    return StreamDetectors(
        served.model.config.n_features, served.model.config.heads, served.name, served.version,
        anomalies=o.anomalies, event_on=on, event_off=off, event_min_run=run,
        silent_after_ms=int(o.silent_after_s * 1000) if o.silent_after_s else None,
        channel_names=list(served.channels) if served.channels else None,
        pipeline=pipeline_config(settings.detectors, served.detectors))


@dataclass
class Messages:
    """Alerts and events of one step, in time order per stream; the anomaly scoring's per-reading numbers."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # |reading - its one-step forecast| [N, C] in the model's normalised units (NaN: no forecast yet), and the
    # anomaly score [N] of each reading of the step (None when anomaly scoring is off)
    errors: np.ndarray | None = None
    scores: np.ndarray | None = None


class StreamDetectors:
    """Anomaly scoring with alert lifecycle on one-step forecasts, event onsets/offsets, silent streams."""

    def __init__(self, n_features: int, heads: tuple[str, ...], model: str, version: str, anomalies: bool = True,
                 event_on: float = 0.6, event_off: float = 0.4, event_min_run: int = 3,
                 silent_after_ms: int | None = None, channel_names: list[str] | None = None,
                 pipeline: PipelineConfig = PRODUCT_PIPELINE) -> None:
        # anomalies are scored on one-step forecasts (or reconstructions): an event-only model has none to score
        self.forecast_head = value_head(heads)
        self.anomalies = AnomalyPipeline(n_features, pipeline, model=model, version=version,
                                         channel_names=channel_names) \
            if anomalies and self.forecast_head is not None else None
        self.events = (HysteresisEvents(event_on, event_off, event_min_run, event_min_run)
                       if "event" in heads else None)
        self.silence = SilenceDetector(silent_after_ms) if silent_after_ms else None

    @property
    def active(self) -> bool:
        """Whether any detector runs (otherwise the service skips this stage)."""
        return any(d is not None for d in (self.anomalies, self.events, self.silence))

    def step(self, results: StepResults, store: StateStore) -> Messages:
        """Messages for the readings of one engine step; updates each stream's detector state in its extras."""
        out = Messages()
        probs = None
        if self.events is not None:
            logits = results.outputs["event"]
            probs = event_probability(logits.reshape(logits.shape[0], -1)[:, 0])
        offsets = results.offsets.tolist()
        extras = list(map(store.extra_for, results.streams))  # each stream's detector state, changed in place
        if self.anomalies is not None:  # all streams at once (see detectors/batched.py)
            y = results.outputs[self.forecast_head]
            one_step = y[:, 0, :] if y.ndim == 3 else y
            states = [extra.get("anomaly") or self.anomalies.init_state() for extra in extras]
            scored: dict[str, np.ndarray] = {}
            per_stream = score_streams(self.anomalies, states, results.streams, results.offsets, results.ts,
                                       results.values, one_step, scored)  # values: the normalised readings
            out.errors, out.scores = scored["error"], scored["score"]
            for extra, st, alerts in zip(extras, states, per_stream, strict=True):
                extra["anomaly"] = st
                out.alerts.extend(alerts)
        if self.events is None and self.silence is None:
            return out
        for i, stream in enumerate(results.streams):
            a, b = offsets[i], offsets[i + 1]
            ts = results.ts[a:b]
            extra = extras[i]
            if self.events is not None:
                st = extra.get("event") or self.events.init_state()
                out.events.extend(self.events.step(st, ts, probs[a:b], stream=stream))
                extra["event"] = st
            if self.silence is not None:
                st = extra.get("silence") or self.silence.init_state()
                out.events.extend(self.silence.step(st, ts, stream=stream))
                extra["silence"] = st
        return out

    def check_silence(self, store: StateStore, now_ms: int) -> tuple[list[dict[str, Any]], list[str]]:
        """'silent' events of resident streams without readings for the timeout; (events, changed streams)."""
        if self.silence is None:
            return [], []
        events, changed = [], []
        for stream in store.streams():
            extra = store.get_extra(stream)
            if not extra or "silence" not in extra:
                continue
            found = self.silence.check(extra["silence"], now_ms, stream=stream)
            if found:
                events.extend(found)
                changed.append(stream)
        return events, changed
