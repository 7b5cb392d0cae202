"""PNG plots of evaluated series (matplotlib, Agg): values, scores, threshold, labelled windows, detections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    """pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_series_panel(path: Path, panels: list[dict[str, Any]], title: str) -> Path:
    """One figure, two rows per series: values with windows shaded, then score with threshold and detections.

    Each panel: name, values [N], score [N], threshold (float), windows [(b, e)], probation (int), subtitle.
    """
    plt = _plt()
    fig, axes = plt.subplots(2 * len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] * len(panels)})
    for k, p in enumerate(panels):
        ax, ay = axes[2 * k, 0], axes[2 * k + 1, 0]
        n = len(p["values"])
        x = np.arange(n)
        ax.plot(x, p["values"], lw=0.7, color="tab:blue")
        for b, e in p["windows"]:
            for a in (ax, ay):
                a.axvspan(b, e, color="tab:red", alpha=0.15, lw=0)
        for a in (ax, ay):
            a.axvspan(0, p["probation"], color="grey", alpha=0.12, lw=0)
        ax.set_title(f"{p['name']}  {p.get('subtitle', '')}", fontsize=9)
        ax.set_ylabel("value")
        ay.plot(x, p["score"], lw=0.7, color="tab:green", label="anomaly score")
        ay.axhline(p["threshold"], color="black", ls="--", lw=0.8, label=f"threshold {p['threshold']:.3f}")
        det = np.flatnonzero((np.asarray(p["score"]) >= p["threshold"]) & (x >= p["probation"]))
        ay.plot(det, np.asarray(p["score"])[det], "v", color="tab:red", ms=4, label="detections")
        ay.set_ylim(-0.05, 1.05)
        ay.set_ylabel("score")
        ay.legend(loc="upper left", fontsize=7)
    return save_figure(fig, path, title, dpi=90)


def save_figure(fig, path: Path, title: str, dpi: int = 90) -> Path:
    """Title, tighten, write the PNG (creating its folder) and free the figure."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
