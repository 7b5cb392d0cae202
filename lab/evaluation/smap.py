"""`streamer eval smap`: Telemanom's evaluation (Hundman et al., KDD 2018) on NASA SMAP telemetry, streamed.

Per channel, as Telemanom does: a small recurrent forecaster (GRU, 32 units, 40 full-batch Adam steps) is fitted on
the channel's train array only (inputs: column 0, the telemetry value, and the 24 one-hot command columns; targets:
the next 10 telemetry values, Telemanom's n_predictions). The test array is then streamed once, in order, in chunks
through `Engine.step` exactly as the daemon serves a stream (hidden state carried across chunks); the error of row t
is |value_t - the one-step forecast made at row t - 1|, and the first 250 rows are not scored (cold state;
Telemanom's first forecast needs l_s = 250 rows). The errors go through `TelemanomSequences` with Telemanom's
settings: EWMA smoothing (span 105); every 70 readings the threshold is found on the last 2100 smoothed errors with
Telemanom's objective, anomalies counted widened by the error buffer (100); windows whose errors are small beside
the values' range are skipped; runs above the threshold are pruned (p = 0.10, chosen by `--cv` over channels) and
those in the newest 70 readings are flagged; the same is done on the errors mirrored around the window's mean
(drops). Flagged readings, widened by the error buffer, form the predicted anomalous sequences. No test label is
used except for scoring, one configuration serves every channel. Scoring is Telemanom's event level (no point
adjustment): a labelled sequence overlapped by a predicted one is a true positive, labelled sequences with none are
false negatives, predicted sequences that overlap no labelled one are false positives; precision = TP / (TP + FP),
recall = TP / (TP + FN), summed over channels. Indices are those of the test arrays, as are the labels.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.detectors import TelemanomSequences
from streamer.engine import Chunk, Engine
from streamer.errors import DataError
from streamer.models import ModelConfig, RecurrentModel, build_model


@dataclass(frozen=True)
class SmapConfig:
    """One configuration for every channel (Telemanom's defaults for the threshold part)."""

    family: str = "gru"
    hidden: int = 32
    seed: int = 0
    epochs: int = 40  # full-batch Adam steps over the train array cut into `segments` pieces
    segments: int = 16
    washout: int = 10  # first steps of each training piece are not fitted (cold state)
    lr: float = 5e-3
    horizon: int = 10  # Telemanom's n_predictions: fitted on the next 10 values; the errors use the first
    chunk: int = 1024  # test readings per engine step
    skip: int = 250  # first test readings are not scored (cold state; Telemanom's first forecast needs l_s = 250)
    window: int = 2100  # Telemanom: window_size 30 x batch_size 70
    batch: int = 70
    span: float = 105.0  # Telemanom: smoothing_perc 0.05 x window
    prune: float = 0.10  # Telemanom's p, chosen by `streamer eval smap --cv` (benchmarks/smap_cv.json)
    error_buffer: int = 100  # Telemanom: flagged readings widened by this many on each side (also in epsilon's count)
    min_frac: float = 0.05
    invert: bool = True  # Telemanom: the errors mirrored around their mean are thresholded too (drops)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


@dataclass
class Channel:
    """One SMAP channel: train and test arrays [n, 25] and labelled sequences (inclusive, merged)."""

    name: str
    train: np.ndarray
    test: np.ndarray
    labels: list[tuple[int, int]]


def merge(seqs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching inclusive ranges merged, sorted."""
    out: list[list[int]] = []
    for a, b in sorted(seqs):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def resolve_data(data: Path, workdir: Path | None = None) -> tuple[Path, Path]:
    """(folder with train/ and test/, labeled_anomalies.csv): an unpacked folder, or the packed one (extracted)."""
    data = Path(data)
    labels = next((p for p in (data / "labeled_anomalies.csv", data.parent / "labeled_anomalies.csv")
                   if p.exists()), None)
    if labels is None:
        raise DataError(f"no labeled_anomalies.csv in {data} or its parent")
    if (data / "train").is_dir() and (data / "test").is_dir():
        return data, labels
    script = data / "verify_and_extract.py"
    if not script.exists():
        raise DataError(f"{data} has neither train/ and test/ nor verify_and_extract.py")
    dest = Path(workdir or tempfile.mkdtemp(prefix="smap-"))
    subprocess.run([sys.executable, str(script), str(dest)], check=True, stdout=subprocess.DEVNULL)
    return dest, labels


def load_channels(root: Path, labels: Path, only: list[str] | None = None, spacecraft: str = "SMAP",
                  max_rows: int | None = None) -> list[Channel]:
    """The labelled channels of one spacecraft (rows of the same channel merged), optionally truncated."""
    seqs: dict[str, list[tuple[int, int]]] = {}
    with open(labels, newline="") as f:
        for r in csv.DictReader(f):
            if r["spacecraft"] == spacecraft:
                pairs = json.loads(r["anomaly_sequences"])
                seqs.setdefault(r["chan_id"], []).extend((int(a), int(b)) for a, b in pairs)
    out = []
    for name in sorted(seqs):
        if only and name not in only:
            continue
        tr, te = root / "train" / f"{name}.npy", root / "test" / f"{name}.npy"
        if not (tr.exists() and te.exists()):
            continue
        train, test = np.load(tr), np.load(te)
        if max_rows:
            train, test = train[:max_rows], test[:max_rows]
        lab = [(a, min(b, len(test) - 1)) for a, b in merge(seqs[name]) if a < len(test)]
        out.append(Channel(name, train.astype(np.float32), test.astype(np.float32), lab))
    if not out:
        raise DataError(f"no {spacecraft} channels with train/test arrays under {root}")
    return out


def fit_channel(ch: Channel, cfg: SmapConfig) -> RecurrentModel:
    """A forecaster of the next `horizon` telemetry values from all 25 columns, fitted on the train array only."""
    torch.manual_seed(cfg.seed)
    f, k = ch.train.shape[1], cfg.horizon
    model = build_model(ModelConfig(family=cfg.family, n_features=f, hidden=cfg.hidden, heads=("forecast",),
                                    horizon=k))
    n = len(ch.train) - k
    s = max(1, min(cfg.segments, n // (4 * cfg.washout + 1)))
    L = n // s
    x = torch.from_numpy(ch.train[: s * L].reshape(s, L, f))
    rows = np.arange(s * L)[:, None] + np.arange(1, k + 1)[None, :]  # row t is fitted on rows t+1 .. t+k
    y = torch.from_numpy(ch.train[rows, 0].reshape(s, L, k))
    w = min(cfg.washout, L // 2)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        out, _ = model(x, strategy="segments")
        loss = torch.nn.functional.mse_loss(out["forecast"][:, w:, :, 0], y[:, w:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def channel_errors(ch: Channel, model: RecurrentModel, cfg: SmapConfig) -> tuple[np.ndarray, np.ndarray]:
    """The test array streamed through the engine in chunks: (one-step forecasts, |error|; NaN in the skip)."""
    engine = Engine.from_model(model, capacity=1, device="cpu")
    n = len(ch.test)
    ts = np.arange(n, dtype=np.int64) * 60_000
    pred = np.full(n, np.nan)
    prev = np.nan
    for a in range(0, n, cfg.chunk):
        sl = slice(a, min(n, a + cfg.chunk))
        res = engine.step([Chunk(ch.name, ts[sl], ch.test[sl])])[0]
        fc = res.outputs["forecast"][:, 0, 0].astype(np.float64)  # one step ahead
        pred[sl] = np.r_[prev, fc[:-1]]  # the forecast of row t was made at row t - 1
        prev = float(fc[-1])
    err = np.abs(ch.test[:, 0] - pred)
    err[: cfg.skip] = np.nan
    return pred, err


def detect(ch: Channel, err: np.ndarray, cfg: SmapConfig) -> dict[str, Any]:
    """Errors through TelemanomSequences (chunking does not change it); the predicted sequences."""
    det = TelemanomSequences(window=cfg.window, batch=cfg.batch, span=cfg.span, prune=cfg.prune,
                             min_frac=cfg.min_frac, invert=cfg.invert, epsilon_buffer=cfg.error_buffer)
    n = len(ch.test)
    out = det.step(det.init_state(), np.arange(n, dtype=np.int64) * 60_000, err, ch.test[:, 0])
    mask = np.zeros(n, dtype=bool)
    for i in out["anomalous"]:
        mask[max(0, i - cfg.error_buffer) : i + cfg.error_buffer + 1] = True
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    seqs = list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist(), strict=True))
    return {"es": out["es"], "threshold": out["threshold"], "sequences": seqs}


def stream_channel(ch: Channel, model: RecurrentModel, cfg: SmapConfig) -> dict[str, Any]:
    """The test array streamed through the engine; errors through TelemanomSequences; predicted sequences."""
    pred, err = channel_errors(ch, model, cfg)
    return {"pred": pred, **detect(ch, err, cfg)}


def score_channel(pred: list[tuple[int, int]], labels: list[tuple[int, int]]) -> dict[str, int]:
    """Telemanom's event-level counts for one channel."""
    def hit(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] <= b[1] and b[0] <= a[1]

    tp = sum(any(hit(lab, p) for p in pred) for lab in labels)
    fp = sum(not any(hit(p, lab) for lab in labels) for p in pred)
    return {"tp": tp, "fn": len(labels) - tp, "fp": fp}


def rates(counts: list[dict[str, int]]) -> tuple[float, float, float]:
    """(precision, recall, F1) of event-level counts summed over channels (0 where undefined)."""
    tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp", "fp", "fn"))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def plot_channels(path: Path, chans: list[Channel], results: dict[str, dict[str, Any]], counts: dict[str, dict],
                  title: str) -> Path:
    """Per channel: telemetry with labelled (red) and predicted (blue) sequences; smoothed error and threshold."""
    from lab.evaluation.plots import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(2 * len(chans), 1, figsize=(11, 3.0 * len(chans)), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] * len(chans)})
    for k, ch in enumerate(chans):
        r, c = results[ch.name], counts[ch.name]
        ax, ay = axes[2 * k, 0], axes[2 * k + 1, 0]
        x = np.arange(len(ch.test))
        ax.plot(x, ch.test[:, 0], lw=0.6, color="black", label="telemetry")
        ax.plot(x, r["pred"], lw=0.6, color="tab:orange", alpha=0.8, label="forecast")
        for a, b in ch.labels:
            for axx in (ax, ay):
                axx.axvspan(a, b, color="tab:red", alpha=0.2, lw=0)
        for a, b in r["sequences"]:
            ax.axvspan(a, b, ymin=0.0, ymax=0.08, color="tab:blue", alpha=0.8, lw=0)
        ax.set_title(f"{ch.name}: TP {c['tp']}  FP {c['fp']}  FN {c['fn']}  (red: labelled, blue: predicted)",
                     fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
        ay.plot(x, r["es"], lw=0.7, color="tab:green", label="smoothed error")
        ay.plot(x, r["threshold"], lw=0.8, color="black", ls="--", label="dynamic threshold")
        ay.legend(loc="upper left", fontsize=7)
    return save_figure(fig, path, title, dpi=80)


def run(data: Path, out_dir: Path | None = None, cfg: SmapConfig | None = None, only: list[str] | None = None,
        max_rows: int | None = None, progress: bool = True, plots: bool = True) -> dict[str, Any]:
    """Fit, stream, threshold and score every SMAP channel; returns the summary (also OUT/summary.json)."""
    from tqdm import tqdm

    cfg = cfg or SmapConfig()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smap-") as tmp:
        root, labels = resolve_data(Path(data), Path(tmp))
        chans = load_channels(root, labels, only, max_rows=max_rows)
    results, counts = {}, {}
    for ch in tqdm(chans, desc="smap", unit="channel", disable=not progress):
        model = fit_channel(ch, cfg)
        results[ch.name] = stream_channel(ch, model, cfg)
        counts[ch.name] = score_channel(results[ch.name]["sequences"], ch.labels)
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn"))
    precision, recall, f1 = rates(list(counts.values()))
    summary: dict[str, Any] = {
        "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
        "tp": tp, "fp": fp, "fn": fn, "channels": len(chans), "labelled_sequences": tp + fn,
        "scoring": "event level, Telemanom: a labelled sequence overlapped by a predicted one is a TP; "
                   "no point adjustment", "seconds": round(time.perf_counter() - started, 1),
        "per_channel": counts, "config": cfg.to_dict(),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for ch in chans:
            seqs = results[ch.name]["sequences"]
            (out_dir / "channels").mkdir(exist_ok=True)
            (out_dir / "channels" / f"{ch.name}.json").write_text(json.dumps(
                {"predicted": seqs, "labelled": ch.labels, **counts[ch.name]}) + "\n")
        if plots:
            def f1(c: dict[str, int]) -> float:
                return 2 * c["tp"] / max(1, 2 * c["tp"] + c["fp"] + c["fn"])

            order = sorted(chans, key=lambda ch: (f1(counts[ch.name]), -counts[ch.name]["fp"]))
            k = min(3, len(order))
            plot_channels(out_dir / "worst.png", order[:k], results, counts, "SMAP, worst channels (event F1)")
            plot_channels(out_dir / "best.png", order[::-1][:k], results, counts, "SMAP, best channels (event F1)")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
