"""Fitting: stateful truncated BPTT (or random windows), masked losses, clipping, early stopping, LR schedule."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from streamer.errors import ConfigError
from streamer.models import RecurrentModel
from training.delay import DelayLine
from training.evaluate import forecast_origins, forecast_targets, predict_stream
from training.layout import Batch, Stream, make_lanes, schedule, window_batches
from training.recurrent_dropout import draw_masks, forward_with_recurrent_dropout

TASKS = ("forecast", "event", "symbol", "reconstruction")


@dataclass
class TrainConfig:
    """Everything that shapes a fit; stored in the checkpoint."""

    task: str = "forecast"
    mode: str = "stateful"  # or "windows"
    epochs: int = 20
    batch: int = 32  # rows (lanes) per batch
    tbptt: int = 64  # chunk length
    window: int = 64  # windows mode: window length
    score_last: int = 1  # windows mode: scored steps at each window's end (1: many-to-one)
    washout: int = 0  # steps of warm-up from a fresh state that are never scored
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    recurrent_dropout: float = 0.0
    orthogonal_init: bool = True
    loss: str = "mse"  # forecast/reconstruction: mse or mae
    pos_weight: float | str = "auto"  # event BCE weight of positives ("auto": negatives / positives)
    transition_weight: float = 0.0  # event BCE: extra weight of steps within transition_window of a label change
    transition_window: int = 2
    patience: int = 5
    lr_schedule: str = "plateau"  # plateau, cosine or none
    lr_factor: float = 0.5
    seed: int = 0
    ensemble: int = 1  # >1: fit this many models (seeds seed, seed+1, ...) and serve their merged mean (pipeline)
    max_minutes: float | None = None
    refit: bool = False  # pipeline: after early stopping, refit on train + validation rows for the best epoch count
    refit_threshold: float | str = "first"  # event threshold after a refit: "first" (the first fit's calibrated) or p
    val_context: int | None = None  # validation pass starts this many rows before the scored rows (None: row 0)
    ridge: tuple[float, ...] = ()  # delay line: its linear map solved in closed form over this ridge grid
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"train task {self.task!r} is not one of {TASKS}")
        if self.mode not in ("stateful", "windows"):
            raise ConfigError(f"train mode {self.mode!r} must be 'stateful' or 'windows'")
        if self.loss not in ("mse", "mae"):
            raise ConfigError(f"train loss {self.loss!r} must be 'mse' or 'mae'")
        if self.lr_schedule not in ("plateau", "cosine", "none"):
            raise ConfigError(f"lr_schedule {self.lr_schedule!r} must be plateau, cosine or none")
        if not 0.0 <= self.recurrent_dropout < 1.0:
            raise ConfigError(f"recurrent_dropout must be in [0, 1), got {self.recurrent_dropout}")
        if self.refit_threshold != "first" and not (isinstance(self.refit_threshold, (int, float))
                                                    and 0.0 < float(self.refit_threshold) < 1.0):
            raise ConfigError(f"refit_threshold must be 'first' or a probability in (0, 1), got "
                              f"{self.refit_threshold!r}")
        self.ridge = tuple(float(r) for r in self.ridge)
        if int(self.epochs) < (0 if self.ridge else 1):
            raise ConfigError("train epochs must be >= 1 (>= 0 with train.ridge: 0 keeps the closed-form map)")
        for name in ("batch", "tbptt", "window", "score_last", "ensemble"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train {name} must be >= 1")


@dataclass
class History:
    """Per-epoch losses, the best epoch and timing."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    initial_val_loss: float | None = None  # fit(keep_initial=True): the validation loss before training
    seconds: float = 0.0
    stopped: str = "epochs"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def masked_mean(err: Tensor, mask: Tensor) -> Tensor:
    """Mean of err over the steps where mask [B, T] is true (err [B, T, ...]); padding never contributes."""
    m = mask.reshape(*mask.shape, *([1] * (err.dim() - mask.dim()))).expand_as(err)
    err = torch.where(m, err, torch.zeros_like(err))  # not err * m: a NaN in padding would poison the sum
    return err.sum() / m.sum().clamp(min=1)


class Targets:
    """Builds per-batch targets and validity masks for a task from the prepared streams."""

    def __init__(self, task: str, streams: list[Stream], horizon: int, device: torch.device,
                 transition_weight: float = 0.0, transition_window: int = 2) -> None:
        self.task, self.streams, self.horizon, self.device = task, streams, horizon, device
        # per-step loss weights (events only): 1, plus transition_weight near a change of the label
        self.step_weights: list[np.ndarray] | None = None
        self.last_weight: Tensor | None = None
        if task == "event" and transition_weight > 0:
            self.step_weights = [transition_weights(s.labels, transition_weight, transition_window)
                                 for s in streams]

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """(x [B,T,F], target, categorical or None, mask [B,T]) for one batch; padding is zero-filled."""
        b, t = batch.t.shape
        f = self.streams[0].x.shape[1]
        x = np.zeros((b, t, f), dtype=np.float32)
        ncat = 0 if self.streams[0].cat is None else self.streams[0].cat.shape[1]
        cat = np.zeros((b, t, ncat), dtype=np.int64) if ncat else None
        mask = batch.scored.copy()
        h = self.horizon
        if self.task == "forecast":
            y = np.zeros((b, t, h, f), dtype=np.float32)
        elif self.task == "reconstruction":
            y = np.zeros((b, t, f), dtype=np.float32)
        else:
            y = np.zeros((b, t), dtype=np.float32 if self.task == "event" else np.int64)
        w = np.ones((b, t), dtype=np.float32) if self.step_weights is not None else None
        for r in range(b):
            n = int(batch.lengths[r])
            if batch.stream[r] < 0 or n == 0:
                continue
            s = self.streams[int(batch.stream[r])]
            ts = batch.t[r, :n]
            x[r, :n] = s.x[ts]
            if w is not None:
                w[r, :n] = self.step_weights[int(batch.stream[r])][ts]
            if cat is not None:
                cat[r, :n] = s.cat[ts]
            if self.task == "forecast":
                ok = ts + h < s.hi  # targets stay inside the scored (training) rows: no leakage
                mask[r, :n] &= ok
                if ok.any():
                    y[r, : int(ok.sum())] = forecast_targets(s.x, ts[ok], h)  # ok is a prefix of ts
            elif self.task == "reconstruction":
                y[r, :n] = s.x[ts]
            elif self.task == "event":
                y[r, :n] = s.labels[ts]
            else:  # next symbol
                ok = ts + 1 < s.hi
                mask[r, :n] &= ok
                y[r, : int(ok.sum())] = s.labels[ts[ok] + 1]
        dev = self.device
        self.last_weight = None if w is None else torch.from_numpy(w).to(dev)
        return (torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev),
                None if cat is None else torch.from_numpy(cat).to(dev), torch.from_numpy(mask).to(dev))


def transition_weights(labels: np.ndarray, extra: float, window: int) -> np.ndarray:
    """1 + extra at steps within `window` steps of a label change (either side), else 1; float32 [T]."""
    lab = (np.asarray(labels) >= 0.5).astype(np.int8)
    w = np.ones(lab.shape[0], dtype=np.float32)
    for c in (np.flatnonzero(np.diff(lab) != 0) + 1).tolist():
        w[max(0, c - window) : c + window + 1] = 1.0 + extra
    return w


def task_loss(task: str, outputs: dict[str, Tensor], y: Tensor, mask: Tensor, loss: str = "mse",
              pos_weight: float | None = None, weight: Tensor | None = None) -> Tensor:
    """Masked loss: MSE/MAE for forecast and reconstruction, weighted BCE for events, cross-entropy for symbols."""
    if task in ("forecast", "reconstruction"):
        m = mask.reshape(*mask.shape, *([1] * (y.dim() - mask.dim())))
        out = outputs[task]
        # where(), not multiplication, on both sides: 0 * NaN padding would still poison the gradients
        d = torch.where(m, out, torch.zeros_like(out)) - torch.where(m, y, torch.zeros_like(y))
        return masked_mean(d * d if loss == "mse" else d.abs(), mask)
    if task == "event":
        logits = outputs["event"][..., 0]
        pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
        safe = torch.where(mask, logits, torch.zeros_like(logits))
        per = F.binary_cross_entropy_with_logits(safe, torch.where(mask, y, torch.zeros_like(y)), reduction="none",
                                                 pos_weight=pw)
        if weight is not None:
            per = per * weight
        return masked_mean(per, mask)
    logits = outputs["symbol"]
    per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.where(mask, y, 0).reshape(-1),
                          reduction="none").view(mask.shape)
    return masked_mean(per, mask)


class Trainer:
    """Owns the model, the optimiser and the carried state of a stateful fit."""

    def __init__(self, model: RecurrentModel, cfg: TrainConfig, delay: DelayLine | None = None) -> None:
        self.model, self.cfg, self.delay = model, cfg, delay
        self.device = torch.device(cfg.device)
        self.model.to(self.device)
        if not cfg.orthogonal_init:
            with torch.no_grad():
                for name, p in model.rnn.named_parameters():
                    if name.startswith("weight_hh"):
                        nn.init.xavier_uniform_(p)
        if delay is not None:
            delay.restore()
        self.keep = None if delay is None else delay.recurrent_keep()
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.state: dict[str, Tensor] | None = None
        self.pos_weight: float | None = None

    def forward(self, x: Tensor, lengths: Tensor, state: dict[str, Tensor] | None,
                cat: Tensor | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Training forward: the serving forward, or the recurrent-dropout cell when that is on."""
        p = self.cfg.recurrent_dropout
        if self.model.training and p > 0:
            masks = draw_masks(self.model, x.shape[0], p, self.keep, self.gen)
            return forward_with_recurrent_dropout(self.model, x, lengths, state, cat, masks)
        return self.model(x, lengths, state, cat)

    def carry(self, batch: Batch) -> dict[str, Tensor]:
        """State for this batch: previous state detached; fresh (initial) state on rows that reset or were idle."""
        b = len(batch.lengths)
        init = self.model.initial_state(b, self.device)
        if self.state is None or next(iter(self.state.values())).shape[1] != b:
            return init
        fresh = torch.from_numpy(batch.reset | (batch.stream < 0)).to(self.device)[None, :, None]
        return {n: torch.where(fresh, init[n], s.detach()) for n, s in self.state.items()}

    def compute_grads(self, batch: Batch, targets: Targets) -> tuple[float, float]:
        """Forward, masked loss, backward, clipping; returns (loss, gradient norm before clipping)."""
        x, y, cat, mask = targets(batch)
        state = self.carry(batch)
        lengths = torch.from_numpy(batch.lengths)
        outputs, new_state = self.forward(x, lengths, state, cat)
        # a row that ended early (padding) has a stale state; the layout resets it before it is read again
        self.state = {n: s.detach() for n, s in new_state.items()}
        if not bool(mask.any()):
            return float("nan"), 0.0
        loss = task_loss(self.cfg.task, outputs, y, mask, self.cfg.loss, self.pos_weight, targets.last_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.delay is not None:
            self.delay.mask_grads()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.clip_norm:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        return float(loss.detach()), norm

    def step(self, batch: Batch, targets: Targets) -> float:
        """One optimiser step on one batch; returns the loss."""
        loss, _ = self.compute_grads(batch, targets)
        if not math.isnan(loss):
            self.opt.step()
            if self.delay is not None:
                self.delay.restore()
        return loss


def validation_loss(model: RecurrentModel, cfg: TrainConfig, streams: list[Stream], horizon: int,
                    pos_weight: float | None) -> float:
    """Task loss on the scored rows of each stream, from one causal pass per stream (as served)."""
    total, n = 0.0, 0
    for s in streams:
        start = 0 if cfg.val_context is None else max(0, s.lo - 1 - cfg.val_context)
        part = predict_stream(model, s, end=s.hi, start=start, heads=(cfg.task,))
        out = {h: np.concatenate([np.zeros((start, *v.shape[1:]), v.dtype), v]) for h, v in part.items()}
        if cfg.task == "forecast":
            org = forecast_origins(s.lo, s.hi, horizon)
            d = out["forecast"][org] - forecast_targets(s.x, org, horizon)
            e = (d**2 if cfg.loss == "mse" else np.abs(d)).mean()
            k = len(org)
        elif cfg.task == "event":
            logits = torch.from_numpy(out["event"][s.lo : s.hi, 0])
            lab = torch.from_numpy(s.labels[s.lo : s.hi].astype(np.float32))
            pw = None if pos_weight is None else torch.tensor(pos_weight)
            e, k = float(F.binary_cross_entropy_with_logits(logits, lab, pos_weight=pw)), s.hi - s.lo
        elif cfg.task == "reconstruction":
            d = out["reconstruction"][s.lo : s.hi] - s.x[s.lo : s.hi]
            e, k = float((d**2 if cfg.loss == "mse" else np.abs(d)).mean()), s.hi - s.lo
        else:
            logits = torch.from_numpy(out["symbol"][s.lo : s.hi - 1])
            e = float(F.cross_entropy(logits, torch.from_numpy(s.labels[s.lo + 1 : s.hi].astype(np.int64))))
            k = s.hi - s.lo - 1
        total, n = total + float(e) * k, n + k
    return total / max(n, 1)


def auto_pos_weight(cfg: TrainConfig, streams: list[Stream]) -> float | None:
    """BCE weight of positive labels: given, or negatives / positives over the training rows."""
    if cfg.task != "event":
        return None
    if cfg.pos_weight != "auto":
        return float(cfg.pos_weight)
    lab = np.concatenate([s.labels[s.lo : s.hi] for s in streams])
    pos = float((lab >= 0.5).sum())
    return (len(lab) - pos) / max(pos, 1.0)


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Callable[[float], None]:
    """The configured learning-rate schedule as a step taken after each epoch with its validation loss."""
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.lr_factor, patience=1).step
    if cfg.lr_schedule == "cosine":
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        return lambda _val_loss: cosine.step()
    return lambda _val_loss: None


def _train_epoch(trainer: Trainer, train: list[Stream], targets: Targets, rng: np.random.Generator,
                 label: str) -> float:
    """One pass over the training rows in the configured layout; the mean batch loss (NaN batches left out)."""
    cfg = trainer.cfg
    trainer.model.train()
    if cfg.mode == "stateful":
        batches = schedule(make_lanes(train, cfg.batch, cfg.washout, rng), cfg.batch, cfg.tbptt, rng)
    else:
        batches = window_batches(train, cfg.window, cfg.score_last, cfg.batch, cfg.washout, rng)
    trainer.state = None
    losses = []
    bar = tqdm(batches, desc=label, leave=False, disable=not cfg.progress, unit="batch", dynamic_ncols=True)
    for batch in bar:
        loss = trainer.step(batch, targets)
        if not math.isnan(loss):
            losses.append(loss)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    return float(np.mean(losses)) if losses else float("nan")


def _stop_reason(cfg: TrainConfig, bad_epochs: int, elapsed_s: float) -> str:
    """Why training stops after this epoch ("" to go on): patience spent, or the time budget."""
    if bad_epochs >= cfg.patience:
        return f"early stop: no validation gain for {cfg.patience} epochs"
    if cfg.max_minutes and elapsed_s > 60 * cfg.max_minutes:
        return f"time budget of {cfg.max_minutes} min"
    return ""


def fit(model: RecurrentModel, cfg: TrainConfig, train: list[Stream], val: list[Stream],
        delay: DelayLine | None = None, lr_plan: list[float] | None = None, keep_initial: bool = False) -> History:
    """Train in place with early stopping on the validation loss; the best epoch's weights are restored.

    lr_plan: a refit: exactly len(lr_plan) epochs at these learning rates (no schedule, no early stopping, the
    last epoch's weights kept); `val` is then only reported (it may be empty).
    keep_initial: the weights before training compete too (an initialisation fitted on its own, e.g. in closed
    form): an epoch is kept only if it validates better; `best_epoch` is -1 when none does.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    trainer = Trainer(model, cfg, delay)
    trainer.pos_weight = auto_pos_weight(cfg, train)
    horizon = model.config.horizon
    targets = Targets(cfg.task, train, horizon, trainer.device, cfg.transition_weight, cfg.transition_window)
    # a refit's plan sets the learning rates itself
    step_schedule = _scheduler(cfg, trainer.opt) if lr_plan is None else (lambda _val_loss: None)
    hist = History()
    best, best_state, bad = math.inf, None, 0
    if keep_initial and val and lr_plan is None:
        best, best_state = validation_loss(model, cfg, val, horizon, trainer.pos_weight), copy.deepcopy(
            model.state_dict())
        hist.initial_val_loss = best
    t0 = time.monotonic()
    n_epochs = cfg.epochs if lr_plan is None else len(lr_plan)
    for epoch in range(n_epochs):
        if lr_plan is not None:
            for group in trainer.opt.param_groups:
                group["lr"] = float(lr_plan[epoch])
        train_loss = _train_epoch(trainer, train, targets, rng, f"epoch {epoch + 1}/{n_epochs}")
        val_loss = validation_loss(model, cfg, val, horizon, trainer.pos_weight) if val else train_loss
        hist.train_loss.append(train_loss)
        hist.val_loss.append(val_loss)
        hist.lr.append(trainer.opt.param_groups[0]["lr"])
        if lr_plan is not None:  # a refit: every epoch runs, the last one is kept
            hist.best_epoch = epoch
            if cfg.progress:
                tqdm.write(f"refit epoch {epoch + 1}/{n_epochs}: train {train_loss:.4f}  lr {hist.lr[-1]:.2e}")
            continue
        if cfg.progress:
            tqdm.write(f"epoch {epoch + 1}: train {train_loss:.4f}  val {val_loss:.4f}  "
                       f"lr {hist.lr[-1]:.2e}  {time.monotonic() - t0:.0f}s")
        if val_loss < best - 1e-6:
            best, bad, hist.best_epoch = val_loss, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        step_schedule(val_loss)
        reason = _stop_reason(cfg, bad, time.monotonic() - t0)
        if reason:
            hist.stopped = reason
            break
    if lr_plan is not None:
        hist.stopped = f"refit: {n_epochs} epochs"
    elif best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.monotonic() - t0
    return hist
