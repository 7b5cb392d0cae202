"""The model `streamer serve` runs: a checkpoint from `streamer train` (hot-reloaded), the built-in checkpoint
shipped in streamer/builtin/ when none is set, or a seeded network (STREAMER_MODEL__CHECKPOINT=random).

A checkpoint brings its normalisation: readings are z-scored with the training statistics before the
model sees them and forecasts are turned back into the units of the input.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.checkpoints import DERIVED_NUMERIC, load
from streamer.config import RANDOM_MODEL, Settings
from streamer.errors import ConfigError
from streamer.models import ModelConfig, RecurrentModel, build_model, value_head

# The checkpoint served without STREAMER_MODEL__CHECKPOINT: package data, rebuilt by `make builtin-model`.
BUILTIN_CHECKPOINT = Path(__file__).resolve().parent / "builtin" / "nab-aws-gru"


@dataclass
class ServedModel:
    """A model ready to serve, with what outputs need to say about it."""

    model: RecurrentModel
    name: str
    version: str
    mean: np.ndarray  # [F] float32, the training mean of each channel
    std: np.ndarray  # [F] float32, the training std of each channel (never 0)
    channels: tuple[str, ...] | None  # feature names, for readings with named channels
    signature: str | None = None  # what identifies the checkpoint on disk, to notice a new one
    event_threshold: float | None = None  # the event probability level calibrated on validation rows in training
    event_min_run: int | None = None  # the event detector's run length the checkpoint was chosen with
    detectors: dict[str, Any] | None = None  # the anomaly pipeline it was trained and evaluated with (its metadata)

    @property
    def family(self) -> str:
        """rnn, lstm or gru."""
        return self.model.config.family

    @property
    def head(self) -> str | None:
        """The head whose outputs are published as forecasts and scored for anomalies (None: an event-only model)."""
        return value_head(self.model.config.heads)

    def same_architecture(self, other: ServedModel) -> bool:
        """Whether per-stream states of `other` are valid for this model (same family and state shapes)."""
        return self.family == other.family and self.model.state_shapes() == other.model.state_shapes()


def seeded_model(settings: Settings) -> ServedModel:
    """A freshly initialised, seeded model as the settings describe (STREAMER_MODEL__CHECKPOINT=random)."""
    m = settings.model
    torch.manual_seed(m.seed)
    cfg = ModelConfig(family=m.family, n_features=m.n_features, hidden=m.hidden, layers=m.layers,
                      heads=("reconstruction",))
    return wrap_model(build_model(cfg).eval(), f"{m.family}-h{m.hidden}-seed{m.seed}", f"seed{m.seed}")


def wrap_model(model: RecurrentModel, name: str, version: str) -> ServedModel:
    """A ServedModel for a model given in code (identity normalisation)."""
    f = model.config.n_features
    return ServedModel(model.eval(), name, version, np.zeros(f, np.float32), np.ones(f, np.float32), None)


def checkpoint_signature(path: str | os.PathLike) -> str | None:
    """Changes whenever a new checkpoint is written in place (atomic writes replace meta.json last)."""
    meta = Path(path) / "meta.json"
    try:
        st = meta.stat()
    except FileNotFoundError:
        return None
    return f"{st.st_mtime_ns}-{st.st_size}-{hashlib.sha256(meta.read_bytes()).hexdigest()[:16]}"


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> ServedModel:
    """Load a training checkpoint (safetensors + meta.json; never executes code) for serving."""
    signature = checkpoint_signature(path)
    model, meta = load(path, device=device)
    norm = meta["normalization"]
    std = np.asarray(norm["std"], dtype=np.float32)
    channels = tuple(meta["features"].get("numeric", [])) or None
    version = str(meta.get("weights_sha256", ""))[:12] or (signature or "unknown")[:12]
    thresholds = meta.get("thresholds") or {}
    threshold, run = thresholds.get("event"), thresholds.get("event_min_run")
    return ServedModel(model, str(meta.get("name") or Path(path).resolve().name), version,
                       np.asarray(norm["mean"], dtype=np.float32), np.where(std > 0, std, 1.0).astype(np.float32),
                       channels, signature, float(threshold) if isinstance(threshold, (int, float)) else None,
                       int(run) if isinstance(run, int) and run > 0 else None, meta.get("detectors"))


def check_servable(served: ServedModel, settings: Settings) -> ServedModel:
    """Refuse a checkpoint the daemon cannot serve with these settings: ConfigError naming the setting.

    Training computes some inputs itself (categorical codes through embeddings, and the '@' inputs derived from
    timestamps, streamer.checkpoints.DERIVED_NUMERIC); the daemon steps the readings' values only, so such a model
    would fail on its first batch. `streamer eval occupancy` computes the derived inputs and can still use them.
    Event levels that the settings contradict (event_hysteresis) are refused too.
    """
    derived = [c for c in served.channels or () if c in DERIVED_NUMERIC]
    if served.model.config.categorical or derived:
        what = f"inputs derived from timestamps {derived}" if derived else "categorical inputs (embeddings)"
        raise ConfigError(f"model.checkpoint: {served.name} takes {what}, which readings do not carry and "
                          f"`streamer serve` does not compute; retrain on the readings' channels only")
    event_hysteresis(settings, served)
    from streamer.detection import pipeline_config

    pipeline_config(settings.detectors, served.detectors)  # refuses a `detectors` metadata it cannot read
    return served


def default_event_run(served: ServedModel) -> int:
    """Readings beyond a level that start or end an event unless a setting says otherwise: the checkpoint's
    `[events] min_run`, else 1 with a calibrated threshold (whose per-reading decisions training scored), else 3."""
    return served.event_min_run or (1 if served.event_threshold is not None else 3)


def event_hysteresis(settings: Settings, served: ServedModel) -> tuple[float, float, int]:
    """The event head's (on, off) probability levels and run length: the settings', else the checkpoint's calibrated
    threshold and run length (1 when it names none: the per-reading decisions training scored on validation rows),
    else 0.6, 0.4 and 3."""
    o, thr = settings.output, served.event_threshold
    run = o.event_min_run or default_event_run(served)
    on = o.event_on if o.event_on is not None else (thr if thr is not None else 0.6)
    off = o.event_off if o.event_off is not None else (thr if thr is not None else 0.4)
    if off > on:
        src = f"the calibrated threshold of {served.name}"
        raise ConfigError(f"STREAMER_OUTPUT__EVENT_OFF ({off}{'' if o.event_off is not None else ', ' + src}) must "
                          f"not exceed STREAMER_OUTPUT__EVENT_ON ({on}{'' if o.event_on is not None else ', ' + src})")
    return on, off, run


def checkpoint_path(settings: Settings) -> Path | None:
    """The checkpoint folder to serve: the setting, the built-in one when unset, None for `random`."""
    chosen = settings.model.checkpoint
    if chosen == RANDOM_MODEL:
        return None
    return Path(chosen) if chosen else BUILTIN_CHECKPOINT


def new_checkpoint(settings: Settings, current: ServedModel) -> Path | None:
    """The configured checkpoint folder when it holds a checkpoint other than `current` (None: nothing new)."""
    path = checkpoint_path(settings)
    if path is None or checkpoint_signature(path) in (None, current.signature):
        return None
    return path


def served_model(settings: Settings, device: str | torch.device) -> ServedModel:
    """The configured checkpoint, else the built-in one (refused if the daemon cannot feed it); with
    STREAMER_MODEL__CHECKPOINT=random the seeded model."""
    path = checkpoint_path(settings)
    if path is None:
        return seeded_model(settings)
    return check_servable(load_checkpoint(path, device), settings)
