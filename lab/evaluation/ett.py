"""`streamer eval ett`: ETTh1 forecasting with the standard protocol, beside repeat-last-value.

Protocol (../shared/data/README.md): train rows [0, 8640), validation [8640, 11520), test [11520, 14400); z-score
with the mean and population std of the train rows; all 7 channels in and out; MSE and MAE on z-scored values
averaged over windows, steps and channels. Training reuses `training.pipeline.run` with examples/ett.toml (only
the data path, the horizon and optionally the epochs differ). Either way the checkpoint is run over the series
from row 0 through the daemon's engine (`served_forecasts`: Engine.step chunk after chunk, state carried), and
scored on the protocol's test windows with the training report's metric functions.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CHANNELS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
TRAIN, VAL, TEST = (0, 8640), (8640, 11520), (11520, 14400)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ett.toml"


def derived_config(data: Path, horizon: int, base: Path = EXAMPLE) -> str:
    """examples/ett.toml with the data path and the horizon replaced (TOML text)."""
    text = Path(base).read_text()
    text, n1 = re.subn(r'(?m)^path\s*=.*$', f"path = {str(Path(data).resolve())!r}".replace("'", '"'), text)
    text, n2 = re.subn(r'(?m)^horizon\s*=\s*\d+', f"horizon = {int(horizon)}", text)
    if n1 != 1 or n2 != 1:
        raise ValueError(f"{base}: expected one 'path =' and one 'horizon =' line")
    return text


def evaluate_checkpoint(data: Path, checkpoint: Path, horizon: int, out_dir: Path | None = None) -> dict[str, Any]:
    """Test metrics of a saved forecaster on the protocol's test windows, and the repeat-last baseline."""
    from streamer import checkpoints
    from training.baselines import forecast_baselines
    from training.data import FeatureSpec, Normalizer, load_csv, split_rows
    from training.evaluate import forecast_metrics, forecast_origins, forecast_targets

    model, meta = checkpoints.load(checkpoint, expect_features=list(CHANNELS))
    if int(meta["horizon"]) < horizon:
        raise ValueError(f"the checkpoint forecasts {meta['horizon']} steps, fewer than --horizon {horizon}")
    series = load_csv(data, FeatureSpec(CHANNELS), "date")[0]
    if len(series) < TEST[1]:
        raise ValueError(f"{data}: {len(series)} rows, the protocol needs {TEST[1]}")
    sp = split_rows(series, {"train": TRAIN, "val": VAL, "test": TEST})
    norm = Normalizer.fit([sp["train"]])
    x = norm.apply(series.values)
    same = bool(np.allclose(norm.mean, meta["normalization"]["mean"], rtol=1e-4)
                and np.allclose(norm.std, meta["normalization"]["std"], rtol=1e-4))
    out = served_forecasts(model, x, TEST[1])[:, :horizon]
    org = forecast_origins(TEST[0], TEST[1], horizon)
    target = forecast_targets(x, org, horizon)
    m = forecast_metrics(out[org], target)
    metrics: dict[str, Any] = {"mse": m["mse"], "mae": m["mae"], **forecast_baselines(x, org, horizon, None),
                               "test_windows": int(len(org)), "normalization_matches_checkpoint": same}
    if out_dir is not None:
        plot_windows(Path(out_dir), x, out, org, horizon, Path(data).stem)
    return metrics


def served_forecasts(model: Any, x: np.ndarray, end: int, chunk: int = 1024) -> np.ndarray:
    """Forecasts [end, horizon, F] for rows [0, end) as the daemon serves them: `Engine.step` chunk after chunk
    on one stream, its state carried by the engine's store (any chunking gives the same forecasts)."""
    from streamer.engine import Chunk, Engine

    engine = Engine.from_model(model, capacity=1, device="cpu")
    parts = []
    for a in range(0, end, chunk):
        b = min(a + chunk, end)
        hours = np.arange(a, b, dtype=np.int64) * 3_600_000
        (result,) = engine.step([Chunk("ett", hours, np.ascontiguousarray(x[a:b], dtype=np.float32))])
        parts.append(np.array(result.outputs["forecast"], dtype=np.float32))
    return np.concatenate(parts)


def plot_windows(out_dir: Path, x: np.ndarray, out: np.ndarray, org: np.ndarray, horizon: int,
                 name: str = "ETTh1") -> list[Path]:
    """best.png and worst.png: the test windows (by MSE over channels) with the OT forecast and repeat-last."""
    from lab.evaluation.plots import _plt

    plt = _plt()
    err = ((out[org] - x[org[:, None] + 1 + np.arange(horizon)]) ** 2).mean(axis=(1, 2))
    order = np.argsort(err)
    c = CHANNELS.index("OT")
    paths = []
    for label, idx in (("best", order[:3]), ("worst", order[::-1][:3])):
        fig, axes = plt.subplots(len(idx), 1, figsize=(10, 2.8 * len(idx)), squeeze=False)
        for ax, i in zip(axes[:, 0], idx, strict=True):
            t = int(org[i])
            hist = np.arange(max(0, t - 2 * horizon), t + 1)
            fut = np.arange(t + 1, t + 1 + horizon)
            ax.plot(hist, x[hist, c], color="black", lw=0.8, label="OT (z)")
            ax.plot(fut, x[fut, c], color="black", lw=0.8, ls=":", label="actual")
            ax.plot(fut, out[t, :, c], color="tab:blue", lw=1.0, label="forecast")
            ax.axhline(x[t, c], color="grey", lw=0.8, ls="--", label="repeat last")
            ax.set_title(f"origin row {t}: window MSE {err[i]:.3f} (all channels)", fontsize=9)
            ax.legend(loc="upper left", fontsize=7)
        fig.suptitle(f"{name} test, {label} windows, horizon {horizon}")
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        p = out_dir / f"{label}.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths


def run(data: Path, horizon: int = 96, out_dir: Path | None = None, checkpoint: Path | None = None,
        epochs: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train with the protocol (or load `checkpoint`) and score the test windows; keys mse, mae, repeat_*."""
    started = time.perf_counter()
    if checkpoint is None:
        from training.pipeline import run as train

        with tempfile.TemporaryDirectory(prefix="ett-") as tmp:
            cfg = Path(tmp) / "ett.toml"
            cfg.write_text(derived_config(Path(data), horizon))
            target = Path(out_dir) if out_dir is not None else Path(tmp) / "run"
            train(cfg, target, epochs=epochs, progress=progress)
            checkpoint_dir = target / "checkpoint"
            metrics = evaluate_checkpoint(Path(data), checkpoint_dir, horizon, out_dir)
        source = "trained (examples/ett.toml)"
    else:
        metrics = evaluate_checkpoint(Path(data), Path(checkpoint), horizon, out_dir)
        source = str(checkpoint)
    metrics.update(data=str(data), horizon=horizon, model=source, seconds=round(time.perf_counter() - started, 1))
    if out_dir is not None:
        import json

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
