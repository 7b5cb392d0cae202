"""Checkpoints: round trip in a fresh process, atomic overwrite, and refusal of tampered files."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from streamer import checkpoints
from streamer.errors import CheckpointError
from streamer.models import ModelConfig, build_model

FEATURES = ["a", "b", "c"]


def _meta() -> dict:
    return {
        "features": {"numeric": FEATURES, "categorical": [], "label": None},
        "normalization": {"mean": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 3.0]},
        "horizon": 2,
        "thresholds": {"q0.99": 1.5},
    }


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="lstm", n_features=3, hidden=8, layers=2, horizon=2))
    return checkpoints.save(tmp_path / "ckpt", model, _meta())


def test_meta_contents(ckpt: Path) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["format_version"] == checkpoints.FORMAT_VERSION
    assert meta["model"]["family"] == "lstm"
    assert set(meta["versions"]) >= {"torch", "numpy", "streamer"}
    assert not any(p.name.startswith(".") for p in ckpt.parent.iterdir())  # no temp dirs left behind


def test_round_trip_bitwise_in_fresh_process(ckpt: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((3, 17, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    model, _ = checkpoints.load(ckpt, expect_features=FEATURES)
    with torch.no_grad():
        here = model(torch.from_numpy(x))[0]["forecast"].numpy()
    code = (
        "import sys, numpy as np, torch\n"
        "from streamer import checkpoints\n"
        "m, _ = checkpoints.load(sys.argv[1])\n"
        "x = torch.from_numpy(np.load(sys.argv[2]))\n"
        "with torch.no_grad():\n"
        "    np.save(sys.argv[3], m(x)[0]['forecast'].numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(ckpt), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True)
    there = np.load(tmp_path / "y.npy")
    assert there.tobytes() == here.tobytes()


def test_overwrite_is_atomic_replace(ckpt: Path) -> None:
    model, meta = checkpoints.load(ckpt)
    meta["thresholds"] = {"q0.99": 2.5}
    checkpoints.save(ckpt, model, meta)
    assert checkpoints.read_meta(ckpt)["thresholds"] == {"q0.99": 2.5}


def test_pickle_payload_refused(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(pickle.dumps({"evil": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoints.load(ckpt)
    torch.save({"w": torch.zeros(2)}, weights)  # zip container with a pickle inside
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoints.load(ckpt)


def test_garbage_refused(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoints.load(ckpt)


def test_wrong_shapes_refused(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["rnn.weight_hh_l0"] = torch.zeros(32, 4)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"rnn.weight_hh_l0: shape \(32, 4\), the config needs \(32, 8\)"):
        checkpoints.load(ckpt)


def test_missing_and_extra_tensors_refused(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["heads.forecast.bias"]
    tensors["backdoor"] = torch.zeros(1)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"missing tensors \['heads.forecast.bias'\].*unexpected.*backdoor"):
        checkpoints.load(ckpt)


def test_modified_weights_refused_by_hash(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["heads.forecast.bias"] = tensors["heads.forecast.bias"] + 1
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoints.load(ckpt)


def test_wrong_feature_names_refused(ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing from checkpoint: \['d'\]; not expected: \['c'\]"):
        checkpoints.load(ckpt, expect_features=["a", "b", "d"])
    with pytest.raises(CheckpointError, match="different order"):
        checkpoints.load(ckpt, expect_features=["b", "a", "c"])


def test_wrong_format_version_refused(ckpt: Path) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["format_version"] = 99
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99, this streamer reads version 1"):
        checkpoints.load(ckpt)


def test_meta_model_mismatch_refused(ckpt: Path) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["model"]["hidden"] = 16
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match the model config"):
        checkpoints.load(ckpt)


def test_inspect_prints_meta(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.cli import main

    assert main(["inspect", str(ckpt), "--verify"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["features"]["numeric"] == FEATURES
    assert main(["inspect", str(ckpt.parent / "nope")]) == 2
