"""Reports people can read: DIR/report/metrics.json and PNG plots (loss curves, forecasts, error distribution)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamer.schema import json_safe


def write_metrics(report_dir: Path, metrics: dict[str, Any]) -> Path:
    """metrics.json (NaN and infinities written as null)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "metrics.json"
    path.write_text(json.dumps(json_safe(metrics), indent=2, sort_keys=True) + "\n")
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ridge(report_dir: Path, val_mse_by_ridge: dict[str, float], chosen: float) -> Path:
    """ridge_validation.png: the validation MSE of the closed-form delay map at each ridge, the chosen one marked."""
    plt = _plt()
    ridges = sorted(float(r) for r in val_mse_by_ridge)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ridges, [val_mse_by_ridge[str(r)] for r in ridges], "s-", label="validation MSE")
    ax.axvline(chosen, color="grey", ls="--", label=f"chosen ({chosen:g})")
    ax.set_xscale("symlog", linthresh=min([r for r in ridges if r > 0], default=1.0))
    ax.set_xlabel("ridge penalty")
    ax.set_ylabel("MSE (z units)")
    ax.legend()
    ax.set_title("Closed-form delay map: validation error by ridge")
    fig.tight_layout()
    path = report_dir / "ridge_validation.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_losses(report_dir: Path, history: dict[str, Any], refit: dict[str, Any] | None = None) -> Path:
    """loss_curves.png: training and validation loss per epoch, best epoch marked; a refit's training loss too."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ep = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(ep, history["train_loss"], "o-", label="train")
    ax.plot(ep, history["val_loss"], "s-", label="validation")
    if history.get("initial_val_loss") is not None:  # the weights before training competed too
        ax.plot([0], [history["initial_val_loss"]], "D", color="tab:orange", label="validation before training")
    if history.get("best_epoch", -1) >= 0 or history.get("initial_val_loss") is not None:
        ax.axvline(history["best_epoch"] + 1, color="grey", ls="--", label="best (restored)")
    if refit is not None:
        ax.plot(np.arange(1, len(refit["train_loss"]) + 1), refit["train_loss"], "^:",
                label="refit on train + validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("Loss curves")
    return _save(fig, report_dir / "loss_curves.png")


def plot_forecast(report_dir: Path, history_x: np.ndarray, target: np.ndarray, pred: np.ndarray,
                  baseline: np.ndarray, channel: str) -> Path:
    """forecast.png: one validation window of one channel: context, actual, model and repeat-last forecast."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    n = len(history_x)
    ax.plot(np.arange(-n + 1, 1), history_x, color="black", lw=1, label="context")
    steps = np.arange(1, len(target) + 1)
    ax.plot(steps, target, color="black", lw=1.5, label="actual")
    ax.plot(steps, pred, color="tab:blue", lw=1.5, label="model")
    ax.plot(steps, baseline, color="tab:red", ls=":", label="repeat last value")
    ax.axvline(0.5, color="grey", ls="--")
    ax.set_xlabel("steps from the forecast origin")
    ax.set_ylabel(f"{channel} (z-score)")
    ax.legend()
    ax.set_title(f"Forecast vs actual, validation slice, channel {channel}")
    return _save(fig, report_dir / "forecast.png")


def plot_events(report_dir: Path, prob: np.ndarray, labels: np.ndarray, threshold: float) -> Path:
    """events.png: predicted probability against the label on the test stream."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(prob, lw=0.8, label="P(event)")
    ax.plot(labels, lw=0.8, color="black", alpha=0.6, label="label")
    ax.axhline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("step")
    ax.legend(loc="upper right")
    ax.set_title("Event probability on the test stream")
    return _save(fig, report_dir / "events.png")


def plot_errors(report_dir: Path, scores: np.ndarray, thresholds: dict[str, float], xlabel: str) -> Path:
    """error_distribution.png: histogram of validation scores with the calibrated thresholds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    s = scores[np.isfinite(scores)]
    ax.hist(s, bins=100, color="tab:blue", alpha=0.8)
    ax.set_yscale("log")
    for name, v in thresholds.items():
        ax.axvline(v, color="tab:red", ls="--")
        ax.text(v, ax.get_ylim()[1] * 0.5, f" {name}={v:.3g}", color="tab:red", rotation=90, va="top")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title("Validation error distribution and calibrated thresholds")
    return _save(fig, report_dir / "error_distribution.png")


def _save(fig, path: Path) -> Path:
    """Tighten, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
