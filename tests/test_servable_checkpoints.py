"""What `streamer serve` takes from a checkpoint besides weights: it refuses, at start-up and at a hot reload, one
whose inputs readings cannot carry, and its event levels default to the checkpoint's calibrated threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamer.checkpoints import save
from streamer.config import load_settings
from streamer.errors import ConfigError
from streamer.model_source import served_model
from streamer.models import ModelConfig, build_model


def _save(directory: Path, numeric: list[str], categorical: tuple = (), threshold: float | None = None,
          **thresholds: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(family="gru", n_features=len(numeric), hidden=4, heads=("event",), categorical=categorical)
    feats = {"numeric": numeric, "categorical": [{"name": "@hour", "cardinality": c} for c, _ in categorical],
             "label": "Occupancy"}
    save(directory, build_model(cfg), {"features": feats, "horizon": 1, "name": directory.name,
                                       "normalization": {"mean": [0.0] * len(numeric), "std": [1.0] * len(numeric)},
                                       "thresholds": {"score": "event_probability", "event": threshold,
                                                      **thresholds}})


def _settings(ckpt: Path, **output):
    return load_settings(model={"checkpoint": str(ckpt)},
                         engine={"device": "cpu"}, metrics={"port": 0}, output=output)


def test_start_up_refuses_derived_and_categorical_inputs(tmp_path: Path) -> None:
    _save(tmp_path / "plain", ["Light", "CO2"])
    assert served_model(_settings(tmp_path / "plain"), "cpu").channels == ("Light", "CO2")
    _save(tmp_path / "derived", ["Light", "@tod_sin"])
    with pytest.raises(ConfigError, match=r"model\.checkpoint: .*\['@tod_sin'\]"):
        served_model(_settings(tmp_path / "derived"), "cpu")
    _save(tmp_path / "embedded", ["Light", "CO2"], categorical=((24, 4),))
    with pytest.raises(ConfigError, match=r"model\.checkpoint: .*categorical"):
        served_model(_settings(tmp_path / "embedded"), "cpu")


def test_hot_reload_keeps_serving_the_old_model(tmp_path: Path) -> None:
    from streamer.service import Service

    ckpt = tmp_path / "model"
    _save(ckpt, ["Light", "CO2"])
    service = Service(_settings(ckpt))
    before = service.served
    _save(ckpt, ["Light", "@weekend"])  # written in place: a new signature the daemon cannot serve
    service.maybe_reload()
    assert service.served is before and service.stats.reloads == 0


def test_event_levels_default_to_the_calibrated_threshold(tmp_path: Path) -> None:
    from streamer.service import Service

    def levels(service: Service) -> tuple[float, float, int]:
        ev = service.detectors.events
        assert ev.min_on == ev.min_off
        return ev.on, ev.off, ev.min_on

    ckpt = tmp_path / "model"
    _save(ckpt, ["Light", "CO2"], threshold=0.51)
    assert levels(Service(_settings(ckpt))) == (0.51, 0.51, 1)
    assert levels(Service(_settings(ckpt, event_on=0.7, event_off=0.2, event_min_run=2))) == (0.7, 0.2, 2)
    assert levels(Service(_settings(ckpt, event_on=0.7))) == (0.7, 0.51, 1)
    with pytest.raises(ConfigError, match=r"STREAMER_OUTPUT__EVENT_OFF \(0.51, the calibrated threshold of model\)"):
        Service(_settings(ckpt, event_on=0.3))
    _save(ckpt, ["Light", "CO2"])  # no calibrated threshold: the fixed defaults
    assert levels(Service(_settings(ckpt))) == (0.6, 0.4, 3)


def test_event_run_length_defaults_to_the_checkpoints_served_and_evaluated_alike(tmp_path: Path) -> None:
    import numpy as np

    from lab.evaluation import occupancy as occ
    from streamer.model_source import load_checkpoint
    from streamer.service import Service

    ckpt = tmp_path / "model"
    _save(ckpt, ["Light", "CO2"], threshold=0.5, event_min_run=3)
    ev = Service(_settings(ckpt)).detectors.events
    assert (ev.on, ev.off, ev.min_on, ev.min_off) == (0.5, 0.5, 3, 3)
    assert Service(_settings(ckpt, event_min_run=1)).detectors.events.min_on == 1  # the setting wins
    # `streamer eval occupancy` streams with the same detector unless told otherwise
    served = load_checkpoint(ckpt)
    ts, values = np.arange(10, dtype=np.int64) * 60_000, np.zeros((10, 2))
    res = occ.stream_test(served, ts, values, occ.EventSettings(), 0.5)
    assert (res["min_on"], res["min_off"]) == (3, 3)
    assert occ.stream_test(served, ts, values, occ.EventSettings(min_on=2, min_off=1), 0.5)["min_on"] == 2


def test_hot_reload_refuses_levels_the_settings_contradict(tmp_path: Path) -> None:
    from streamer.service import Service

    ckpt = tmp_path / "model"
    _save(ckpt, ["Light", "CO2"], threshold=0.2)
    service = Service(_settings(ckpt, event_on=0.3))
    before = service.served
    _save(ckpt, ["Light", "CO2"], threshold=0.45)  # off would be 0.45 > on 0.3
    service.maybe_reload()
    assert service.served is before and service.detectors.events.off == 0.2
