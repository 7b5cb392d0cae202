"""Per-stream detectors on top of the engine: normalisation, forecast-error scoring, dynamic thresholds, anomaly
likelihood, alert lifecycle, events with hysteresis and silence. No Kafka or Prometheus imports here.

Every detector is a small class holding only its configuration; the per-stream state it reads and updates is a
plain JSON-able dict (numbers, strings, lists, None) made by `init_state`, so that it fits the StateStore's
per-stream extras and the snapshots they go into. `step(state, ts, ...)` consumes one stream's chunk in time order,
updates `state` in place and returns outputs for those readings only: it never looks ahead.
"""

from streamer.detectors.alerts import AlertLifecycle
from streamer.detectors.base import Detector, check_plain
from streamer.detectors.events import HysteresisEvents, SilenceDetector, event_probability
from streamer.detectors.forecast_error import ForecastErrorScorer
from streamer.detectors.likelihood import AnomalyLikelihood
from streamer.detectors.normalise import OnlineNormaliser
from streamer.detectors.pipeline import AnomalyPipeline, PipelineConfig
from streamer.detectors.seasonal import SeasonalMemory
from streamer.detectors.thresholds import DynamicThreshold, TelemanomSequences

__all__ = [
    "AlertLifecycle",
    "AnomalyLikelihood",
    "AnomalyPipeline",
    "Detector",
    "DynamicThreshold",
    "ForecastErrorScorer",
    "HysteresisEvents",
    "OnlineNormaliser",
    "PipelineConfig",
    "SeasonalMemory",
    "SilenceDetector",
    "TelemanomSequences",
    "check_plain",
    "event_probability",
]
