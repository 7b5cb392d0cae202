"""Safe checkpoints: weights in safetensors, metadata in JSON, atomic writes; loading never executes code."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from streamer.errors import CheckpointError, ConfigError
from streamer.models import ModelConfig, RecurrentModel, build_model
from streamer.schema import json_safe

FORMAT = "streamer-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "meta.json"
MAX_META_BYTES = 16 << 20
REQUIRED_META = ("format", "format_version", "model", "features", "normalization", "horizon")
# Inputs a checkpoint's features may name that training computes rather than reads (serving refuses them):
DERIVED = {"@hour": 24, "@weekday": 7}  # categorical inputs computed from the timestamp
# numeric inputs computed from the timestamp (local wall-clock time as written in the file): the minute of the
# day and the day of the week on the unit circle; a reading's own timestamp only, so they never look ahead
DERIVED_NUMERIC = ("@tod_sin", "@tod_cos", "@dow_sin", "@dow_cos", "@weekend")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint's numbers."""
    import streamer

    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "streamer": getattr(streamer, "__version__", "unknown"),
        "python": platform.python_version(),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(directory: str | Path, model: RecurrentModel, meta: dict[str, Any]) -> Path:
    """Write DIR/model.safetensors and DIR/meta.json atomically (temp dir, then os.replace); returns DIR."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    full = dict(meta)
    full.update(format=FORMAT, format_version=FORMAT_VERSION, model=model.config.to_dict())
    full.setdefault("versions", library_versions())
    for key in ("features", "normalization", "horizon"):
        if key not in full:
            raise CheckpointError(f"checkpoint metadata needs {key!r}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        full["weights_sha256"] = _sha256(tmp / WEIGHTS)
        with open(tmp / META, "w") as f:
            json.dump(json_safe(full), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if directory.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / "ckpt")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, validated for format and version (no weights are read)."""
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (is {directory} a checkpoint directory?)")
    if path.stat().st_size > MAX_META_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_META_BYTES} allowed")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {missing}")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{path}: format is {meta['format']!r}, expected {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {meta['format_version']!r}, this streamer reads version {FORMAT_VERSION}")
    return meta


def check_features(meta: dict[str, Any], expect: list[str] | tuple[str, ...]) -> None:
    have = list(meta["features"].get("numeric", []))
    want = list(expect)
    if have == want:
        return
    parts = [f"checkpoint features {have} differ from the expected {want}"]
    if set(have) == set(want):
        parts.append("same names in a different order")
    else:
        if sorted(set(want) - set(have)):
            parts.append(f"missing from checkpoint: {sorted(set(want) - set(have))}")
        if sorted(set(have) - set(want)):
            parts.append(f"not expected: {sorted(set(have) - set(want))}")
    raise CheckpointError("; ".join(parts))


def _is_safetensors(path: Path) -> bool:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        n = int.from_bytes(head, "little")
        if n < 2 or n > min(size - 8, 100 << 20):
            return False
        text = f.read(n)
    try:
        return isinstance(json.loads(text), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not _is_safetensors(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            kind = "a pickle payload"
        elif head[:2] == b"PK":
            kind = "a zip archive (torch.save, pickle inside)"
        else:
            kind = "not a safetensors file (bad header)"
        raise CheckpointError(f"{path}: {kind}; refusing to load it: only safetensors is read (unpickling runs code)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file: {exc}") from exc


def load(directory: str | Path, expect_features: list[str] | tuple[str, ...] | None = None,
         device: str | torch.device = "cpu") -> tuple[RecurrentModel, dict[str, Any]]:
    """(model in eval mode, metadata) of a checkpoint; any mismatch raises CheckpointError saying what differs."""
    directory = Path(directory)
    meta = read_meta(directory)
    if expect_features is not None:
        check_features(meta, expect_features)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory / META}: bad model config: {exc}") from exc
    return load_weights(directory, meta, build_model(cfg), cfg.n_features).to(device).eval(), meta


def load_weights(directory: Path, meta: dict[str, Any], model: torch.nn.Module, n_features: int) -> torch.nn.Module:
    """Check the feature spec and normalisation against the model, read the weights (safetensors only) and
    load them after checking names, shapes, dtypes and the recorded sha256; raises CheckpointError."""
    n_numeric = len(meta["features"].get("numeric", []))
    if n_numeric != n_features:
        raise CheckpointError(f"feature spec names {n_numeric} numeric channels but the model has {n_features}")
    for key in ("mean", "std"):
        if len(meta["normalization"].get(key, [])) != n_features:
            raise CheckpointError(f"normalization {key} has {len(meta['normalization'].get(key, []))} entries, "
                                  f"the model has {n_features} features")
    tensors = _read_weights(directory / WEIGHTS)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for k in sorted(set(expected) & set(tensors)):
        if tuple(tensors[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k}: shape {tuple(tensors[k].shape)}, the config needs {tuple(expected[k].shape)}")
        elif tensors[k].dtype != expected[k].dtype:
            problems.append(f"{k}: dtype {tensors[k].dtype}, expected {expected[k].dtype}")
    if problems:
        raise CheckpointError(f"{directory / WEIGHTS} does not match the model config: " + "; ".join(problems))
    want_sha = meta.get("weights_sha256")
    if want_sha is not None and _sha256(directory / WEIGHTS) != want_sha:
        raise CheckpointError(f"{directory / WEIGHTS}: sha256 differs from the one recorded in {META}")
    model.load_state_dict(tensors, strict=True)
    return model
