"""`streamer serve` refuses, at start-up and at a hot reload, a checkpoint whose inputs readings cannot carry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamer.config import load_settings
from streamer.errors import ConfigError
from streamer.model_source import served_model
from streamer.models import ModelConfig, build_model
from training.checkpoints import save


def _save(directory: Path, numeric: list[str], categorical: tuple = ()) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(family="gru", n_features=len(numeric), hidden=4, heads=("event",), categorical=categorical)
    feats = {"numeric": numeric, "categorical": [{"name": "@hour", "cardinality": c} for c, _ in categorical],
             "label": "Occupancy"}
    save(directory, build_model(cfg), {"features": feats, "horizon": 1, "name": directory.name,
                                       "normalization": {"mean": [0.0] * len(numeric), "std": [1.0] * len(numeric)}})


def _settings(ckpt: Path):
    return load_settings(model={"family": "gru", "n_features": 2, "hidden": 4, "checkpoint": str(ckpt)},
                         engine={"device": "cpu"}, metrics={"port": 0})


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
    service._maybe_reload()
    assert service.served is before and service.stats.reloads == 0
