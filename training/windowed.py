"""Window-based training of the reconstruction autoencoder (streamer/models/autoencoder.py) and its checkpoints.

Data: one or many series (float arrays [T, F] in their own units). Each series is split in time: rows
[0, cut) train, rows [cut, T) validate, cut = floor(T * (1 - val_fraction)). Windows are cut inside each part
separately (`window_bounds`), so no validation window shares a row with training. Normalisation (z-score) is
fitted on the training rows only and stored in the checkpoint.

Windows: [s, s + W) for s = lo, lo + stride, ... while they fit; when the last full window ends before the
part's end, one shorter window [last start + stride, end) covers the remaining rows. Short windows (and whole
series shorter than W) are zero-padded to W and carry their length: the encoder never reads the padding
(packed sequences) and the loss ignores it (masked MSE over valid steps).

Fit: Adam(W) on the masked MSE, gradient clipping by norm, early stopping on the validation loss with the best
epoch's weights restored, seeded (model init, shuffling). The returned `WindowFit` holds the model, the
validation window errors (combined and per channel) and the threshold calibrated as their `quantile`.

Checkpoints: written with streamer.checkpoints.save (safetensors + meta.json, atomic). meta["model"] is
WindowAEConfig.to_dict(), which carries "kind": "window_autoencoder"; ModelConfig has no such key, so
streamer.checkpoints.load (used by the daemon) refuses such a checkpoint with "bad model config: unknown model
config keys ['decoder', 'kind', ...]" rather than building a wrong model, and every existing checkpoint keeps
loading as before. `load` below is the autoencoder's loader: the same format checks, the same refusal of
non-safetensors payloads, tensor names/shapes/dtypes and the weights' sha256 checked before anything is loaded.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer import checkpoints
from streamer.errors import CheckpointError, ConfigError
from streamer.models.autoencoder import KIND, WindowAEConfig, WindowAutoencoder, masked_mse
from training.fit import History

TASK = "window_reconstruction"


@dataclass
class WindowTrainConfig:
    """Everything that shapes a windowed fit; stored in the checkpoint."""

    stride: int = 4  # training windows start every `stride` rows
    val_stride: int | None = None  # validation windows (None: stride)
    val_fraction: float = 0.2  # the last fraction of every series validates
    min_len: int = 2  # shorter tail windows are dropped
    epochs: int = 30
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    patience: int = 5
    seed: int = 0
    quantile: float = 0.99  # threshold: this quantile of validation window errors
    max_seconds: float | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("stride", "min_len", "epochs", "batch", "patience"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"windowed train {name} must be >= 1, got {getattr(self, name)}")
        if self.val_stride is not None and self.val_stride < 1:
            raise ConfigError(f"windowed train val_stride must be >= 1, got {self.val_stride}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"windowed train val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.quantile <= 1.0:
            raise ConfigError(f"windowed train quantile must be in (0, 1], got {self.quantile}")


@dataclass
class WindowHistory(History):
    """History of a windowed fit (masked MSE, z-score units), with the validation loss before training."""

    initial_val_loss: float = math.nan


@dataclass
class Windows:
    """Windows of normalised rows: x float32 [N, W, F] zero-padded, lengths [N], source series and row bounds."""

    x: np.ndarray
    lengths: np.ndarray
    series: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


@dataclass
class WindowFit:
    """Result of fit_windowed: the model (eval mode, CPU), normalisation, validation errors and thresholds."""

    model: WindowAutoencoder
    train_config: WindowTrainConfig
    history: WindowHistory
    mean: np.ndarray
    std: np.ndarray
    val_errors: np.ndarray  # [N_val] combined score of each validation window
    val_channel_errors: np.ndarray  # [N_val, F]
    threshold: float  # quantile of val_errors
    channel_thresholds: np.ndarray  # [F]: the same quantile per channel
    splits: list[tuple[int, int]]  # per series: (cut, length): rows [0, cut) train, [cut, length) validate
    n_train_windows: int = 0
    fingerprint: str = ""


def window_bounds(lo: int, hi: int, window: int, stride: int, min_len: int = 1) -> list[tuple[int, int]]:
    """Windows [start, end) inside rows [lo, hi): full ones every `stride` rows, then one shorter tail if needed."""
    n = hi - lo
    if n < max(1, min_len):
        return []
    if n <= window:
        return [(lo, hi)]
    starts = range(lo, hi - window + 1, stride)
    out = [(s, s + window) for s in starts]
    tail = starts[-1] + stride
    if out[-1][1] < hi and hi - tail >= max(1, min_len):
        out.append((tail, hi))
    return out


def make_windows(series: Sequence[np.ndarray], ranges: Sequence[tuple[int, int]], window: int, stride: int,
                 min_len: int = 1) -> Windows:
    """Windows of each series i inside rows ranges[i] = (lo, hi); rows are taken as given (normalise first)."""
    xs, lens, sid, st, en = [], [], [], [], []
    f = int(series[0].shape[1])
    for i, (x, (lo, hi)) in enumerate(zip(series, ranges, strict=True)):
        b = window_bounds(lo, hi, window, stride, min_len)
        if not b:
            continue
        s = np.array([a for a, _ in b], dtype=np.int64)
        e = np.array([z for _, z in b], dtype=np.int64)
        idx = s[:, None] + np.arange(window)[None, :]
        ok = idx < e[:, None]
        w = np.asarray(x, dtype=np.float32)[np.minimum(idx, e[:, None] - 1)]
        xs.append(np.where(ok[..., None], w, 0.0).astype(np.float32))
        lens.append(e - s)
        sid.append(np.full(len(b), i, dtype=np.int64))
        st.append(s)
        en.append(e)
    if not xs:
        z = np.zeros(0, dtype=np.int64)
        return Windows(np.zeros((0, window, f), np.float32), z, z, z, z)
    return Windows(np.concatenate(xs), np.concatenate(lens), np.concatenate(sid), np.concatenate(st),
                   np.concatenate(en))


def _as_2d(series: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(series, np.ndarray):
        series = [series]
    out = [np.asarray(getattr(s, "values", s), dtype=np.float64) for s in series]
    out = [s[:, None] if s.ndim == 1 else s for s in out]
    if not out or any(s.ndim != 2 or s.shape[1] != out[0].shape[1] for s in out):
        raise ConfigError("series must be arrays [T, F] with the same F")
    if any(not np.isfinite(s).all() for s in out):
        raise ConfigError("series hold non-finite values")
    return out


@torch.no_grad()
def window_errors(model: WindowAutoencoder, w: Windows, batch: int = 256,
                  device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(combined [N], per channel [N, F]) masked reconstruction MSE of every window."""
    model.eval()
    per = []
    for a in range(0, len(w), batch):
        x = torch.from_numpy(w.x[a : a + batch]).to(device)
        pc, _ = model.score(x, torch.from_numpy(w.lengths[a : a + batch]))
        per.append(pc.cpu().numpy())
    pc = np.concatenate(per) if per else np.zeros((0, model.config.n_features), np.float32)
    return pc.mean(axis=1), pc


def _loss_over(errors: np.ndarray, lengths: np.ndarray) -> float:
    """Masked MSE over all valid steps of a set of windows, from their per-window means."""
    return float((errors * lengths).sum() / max(int(lengths.sum()), 1))


def _window_sets(data: list[np.ndarray], window: int, cfg: WindowTrainConfig) -> tuple:
    """Each series' training rows (its first 1 - val_fraction) and validation rows, the training rows' mean and
    standard deviation, and the normalised training and validation windows."""
    splits = [(int(math.floor(len(s) * (1.0 - cfg.val_fraction))), len(s)) for s in data]
    train_rows = np.concatenate([s[:cut] for s, (cut, _) in zip(data, splits, strict=True)])
    if len(train_rows) < 2:
        raise ConfigError("not enough training rows")
    mean = train_rows.mean(axis=0)
    std = train_rows.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    norm = [((s - mean) / std).astype(np.float32) for s in data]
    train = make_windows(norm, [(0, cut) for cut, _ in splits], window, cfg.stride, cfg.min_len)
    val = make_windows(norm, [(cut, n) for cut, n in splits], window, cfg.val_stride or cfg.stride, cfg.min_len)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"no training or validation windows (train {len(train)}, validation {len(val)})")
    return splits, mean, std, train, val


def _window_epoch(model: WindowAutoencoder, opt: torch.optim.Optimizer, xt: torch.Tensor, lt: torch.Tensor,
                  rng: np.random.Generator, cfg: WindowTrainConfig) -> float:
    """One pass over the training windows in a random order; the mean batch loss."""
    model.train()
    dev = next(model.parameters()).device
    losses = []
    for idx in np.array_split(rng.permutation(len(xt)), max(1, math.ceil(len(xt) / cfg.batch))):
        i = torch.from_numpy(idx)
        x, lens = xt[i].to(dev), lt[i]
        loss = masked_mse(model(x, lens), x, lens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def fit_windowed(series: Sequence[np.ndarray] | np.ndarray, model_cfg: WindowAEConfig,
                 cfg: WindowTrainConfig | None = None) -> WindowFit:
    """Train a window autoencoder on the series (raw units); returns the best model and its validation errors."""
    cfg = cfg or WindowTrainConfig()
    data = _as_2d(series)
    if data[0].shape[1] != model_cfg.n_features:
        raise ConfigError(f"series have {data[0].shape[1]} channels, the model {model_cfg.n_features}")
    splits, mean, std, train, val = _window_sets(data, model_cfg.window, cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = torch.device(cfg.device)
    model = WindowAutoencoder(model_cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    hist = WindowHistory()
    hist.initial_val_loss = _loss_over(window_errors(model, val, device=dev)[0], val.lengths)
    best, best_state, bad = math.inf, None, 0
    t0 = time.monotonic()
    xt, lt = torch.from_numpy(train.x), torch.from_numpy(train.lengths)
    for epoch in range(cfg.epochs):
        hist.train_loss.append(_window_epoch(model, opt, xt, lt, rng, cfg))
        val_loss = _loss_over(window_errors(model, val, device=dev)[0], val.lengths)
        hist.val_loss.append(val_loss)
        if val_loss < best - 1e-7:
            best, bad, hist.best_epoch = val_loss, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if bad >= cfg.patience:
            hist.stopped = f"early stop: no validation gain for {cfg.patience} epochs"
            break
        if cfg.max_seconds and time.monotonic() - t0 > cfg.max_seconds:
            hist.stopped = f"time budget of {cfg.max_seconds} s"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    hist.seconds = time.monotonic() - t0
    errs, per = window_errors(model, val)
    h = hashlib.sha256()
    for s, (cut, _) in zip(data, splits, strict=True):
        h.update(np.ascontiguousarray(s[:cut]).tobytes())
    return WindowFit(model, cfg, hist, mean, std, errs, per, float(np.quantile(errs, cfg.quantile)),
                     np.quantile(per, cfg.quantile, axis=0), splits, len(train), h.hexdigest())


def score_series(model: WindowAutoencoder, values: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 stride: int, min_len: int = 1, tail: bool = True) -> dict[str, np.ndarray]:
    """Scores of the windows of one series in raw units, normalised with the stored (training) statistics.

    Window k covers rows [start[k], end[k]) and its score reads those rows only. Without `tail` only full
    windows are scored (what a streaming detector can do before a series ends).
    """
    x = ((_as_2d([values])[0] - mean) / std).astype(np.float32)
    w = make_windows([x], [(0, len(x))], model.config.window, stride, min_len)
    keep = np.ones(len(w), dtype=bool) if tail else w.lengths == model.config.window
    w = Windows(w.x[keep], w.lengths[keep], w.series[keep], w.start[keep], w.end[keep])
    score, per = window_errors(model, w)
    return {"start": w.start, "end": w.end, "score": score, "per_channel": per}


def save(directory: str | Path, fit: WindowFit, features: Sequence[str] | None = None,
         name: str | None = None) -> Path:
    """Checkpoint of a windowed fit (streamer.checkpoints format; meta["model"]["kind"] = "window_autoencoder")."""
    cfg = fit.model.config
    names = list(features) if features is not None else [f"c{i}" for i in range(cfg.n_features)]
    if len(names) != cfg.n_features:
        raise ConfigError(f"{len(names)} feature names for a model of {cfg.n_features} features")
    tc = fit.train_config
    q = f"q{tc.quantile:g}"
    meta = {
        "name": name,
        "task": TASK,
        "features": {"numeric": names, "categorical": [], "label": None},
        "normalization": {"mean": [float(v) for v in fit.mean], "std": [float(v) for v in fit.std]},
        "horizon": 0,  # no forecast: the model reconstructs windows
        "window": {"length": cfg.window, "stride": tc.val_stride or tc.stride, "min_len": tc.min_len},
        "thresholds": {"score": "window_mse", "quantile": tc.quantile, q: fit.threshold,
                       "per_channel": {q: [float(v) for v in fit.channel_thresholds]}},
        "training": {"config": asdict(tc), "history": fit.history.to_dict(),
                     "splits": [list(s) for s in fit.splits], "train_windows": fit.n_train_windows,
                     "val_windows": int(len(fit.val_errors))},
        "data_fingerprint": {"train_rows_sha256": fit.fingerprint},
        "metrics": {"initial_val_loss": fit.history.initial_val_loss,
                    "best_val_loss": min(fit.history.val_loss) if fit.history.val_loss else None,
                    "val_error_median": float(np.median(fit.val_errors)),
                    "val_error_max": float(np.max(fit.val_errors))},
    }
    return checkpoints.save(directory, fit.model, meta)


def load(directory: str | Path, expect_features: Sequence[str] | None = None,
         device: str | torch.device = "cpu") -> tuple[WindowAutoencoder, dict[str, Any]]:
    """(window autoencoder in eval mode, metadata); any mismatch raises CheckpointError saying what differs."""
    directory = Path(directory)
    meta = checkpoints.read_meta(directory)
    if expect_features is not None:
        checkpoints.check_features(meta, list(expect_features))
    model_d = meta["model"]
    if not isinstance(model_d, dict) or model_d.get("kind") != KIND:
        got = model_d.get("kind", "recurrent (no kind)") if isinstance(model_d, dict) else type(model_d).__name__
        raise CheckpointError(f"{directory}: model kind is {got!r}, expected {KIND!r} "
                              "(load recurrent checkpoints with streamer.checkpoints.load)")
    try:
        cfg = WindowAEConfig.from_dict(model_d)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory / checkpoints.META}: bad model config: {exc}") from exc
    model = checkpoints.load_weights(directory, meta, WindowAutoencoder(cfg), cfg.n_features)
    return model.to(device).eval(), meta
