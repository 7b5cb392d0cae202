"""`streamer eval occupancy`: train (or load) an event model, stream the test file through the engine and events.

The model is trained offline by `training.pipeline` on the training file only (its last rows are the validation
tail that picks the epoch and the decision threshold), or loaded from a checkpoint. The built-in configuration
(DEFAULT_TRAINING, the same as examples/occupancy.toml) is one 16-unit GRU on the five sensors beside a linear path
over the newest reading (five delay units of the state read by the event head, started at the memoryless LDA of the
training rows), its loss weighted up near label changes, refit on the whole training file once the validation tail
chose the epochs; three seeds of it merged (`training.ensemble.merge`) into one three-times-wider GRU whose output
is the members' mean logit, so the engine still serves one model; served with events of at least 3 readings. The
linear path, the ensemble and the run length were chosen by cross-validation over the days of datatraining.txt
(benchmarks/occupancy_cv.py). The test file is then streamed
once, in time order, in chunks of readings through `Engine.step` exactly as the daemon feeds it (readings z-scored
with the checkpoint's training statistics, per-stream state carried in the state store, never reset), and the
per-reading event probabilities go through the hysteresis detector `HysteresisEvents`, whose state lives in the
store's per-stream extras. Nothing looks ahead: the output at minute t depends on the readings up to t only.

Metrics (rows are minutes, one reading a minute):
- accuracy: the detector's causal state after each reading (inside an event or not) against the label;
- onset/offset recall: a true boundary (label 0 -> 1 or 1 -> 0) counts as detected when a detected boundary of the
  same type (an onset message's `start`, an offset message's `end`) lies within +-tolerance rows of it; each true
  boundary and each detected boundary is matched at most once (maximum one-to-one matching);
- mean_delay_min: mean over matched boundaries of (when the message was emitted - the true boundary), in minutes;
- false_events_per_day: detected boundaries that match none, per day of test data (rows / 1440).
A boundary at the first row is not a transition (for labels and detections alike): the stream starts there.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.schema import json_safe

TOLERANCE = 2  # minutes (rows) either side
LONG_RUN = 5  # minutes: a boundary is "long" when the absence and the presence it separates both last this long

#: what `streamer eval occupancy` trains when no --config is given (examples/occupancy.toml holds the same)
DEFAULT_TRAINING: dict[str, Any] = {
    "data": {
        "time_column": "date",
        "numeric": ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"],
        "label": "Occupancy",
    },
    "split": {"val_fraction": 0.15},
    "model": {"family": "gru", "hidden": 16, "horizon": 1, "context": 1},
    "train": {"mode": "stateful", "epochs": 40, "batch": 16, "tbptt": 32, "washout": 0, "lr": 0.01,
              "pos_weight": 1.0, "clip_norm": 1.0, "recurrent_dropout": 0.0, "patience": 6,
              "lr_schedule": "plateau", "seed": 0, "ensemble": 3, "max_minutes": 7,
              "transition_weight": 2.0, "refit": True},
    "events": {"min_run": 3},
    "report": {"tolerance": TOLERANCE},
}


@dataclass(frozen=True)
class EventSettings:
    """The hysteresis detector's settings; on/off default to the checkpoint's calibrated threshold, the run lengths
    to what the daemon serves (model_source.default_event_run)."""

    on: float | None = None
    off: float | None = None
    min_on: int | None = None
    min_off: int | None = None
    chunk: int = 60  # readings per engine step (any chunking gives the same outputs)
    tolerance: int = TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------- event matching


def boundaries(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of onsets (0 -> 1) and offsets (1 -> 0) of a 0/1 series: the first row of the new value."""
    d = np.diff(np.asarray(binary, dtype=np.int8))
    return np.flatnonzero(d == 1) + 1, np.flatnonzero(d == -1) + 1


def long_boundary_mask(binary: np.ndarray, rows: np.ndarray, min_run: int = LONG_RUN) -> np.ndarray:
    """bool per boundary row in `rows`: the runs of the 0/1 series on both sides last at least `min_run` rows."""
    on, off = boundaries(binary)
    edges = np.concatenate([[0], np.sort(np.concatenate([on, off])), [len(binary)]])
    at = np.searchsorted(edges, np.asarray(rows, dtype=np.int64))  # edges[at] is the boundary itself
    return (edges[at] - edges[at - 1] >= min_run) & (edges[at + 1] - edges[at] >= min_run)


def match(true: np.ndarray, detected: np.ndarray, tol: int) -> list[tuple[int, int]]:
    """Maximum one-to-one matching of detected to true boundaries with |detected - true| <= tol.

    Returns (true index, detected index) pairs (indices into the two arrays). Both sorted by time, each true
    boundary takes the earliest free detection that can still reach it: optimal for intervals on a line.
    """
    t_ord = np.argsort(np.asarray(true), kind="stable")
    d_ord = np.argsort(np.asarray(detected), kind="stable")
    tv, dv = np.asarray(true)[t_ord], np.asarray(detected)[d_ord]
    pairs, j = [], 0
    for i, t in enumerate(tv.tolist()):
        while j < len(dv) and dv[j] < t - tol:
            j += 1
        if j < len(dv) and dv[j] <= t + tol:
            pairs.append((int(t_ord[i]), int(d_ord[j])))
            j += 1
    return pairs


def event_scores(labels: np.ndarray, predicted: np.ndarray, det_onsets: np.ndarray, det_offsets: np.ndarray,
                 onset_emitted: np.ndarray | None = None, offset_emitted: np.ndarray | None = None,
                 tol: int = TOLERANCE, rows_per_day: float = 1440.0) -> dict[str, Any]:
    """Per-row accuracy and event-level scores; boundaries and emission times are row indices.

    det_onsets/det_offsets: detected boundary rows (an onset's first row, an offset's first row after the event);
    *_emitted: the row at which each message was emitted (default: the boundary itself).
    """
    lab = (np.asarray(labels) >= 0.5).astype(np.int8)
    pred = (np.asarray(predicted) >= 0.5).astype(np.int8)
    if lab.shape != pred.shape:
        raise ValueError(f"labels {lab.shape} and predictions {pred.shape} differ in shape")
    on_t, off_t = boundaries(lab)
    out: dict[str, Any] = {"accuracy": float((lab == pred).mean()) if lab.size else float("nan")}
    delays: list[int] = []
    false = 0
    for kind, true, det, emitted in (("onset", on_t, det_onsets, onset_emitted),
                                     ("offset", off_t, det_offsets, offset_emitted)):
        det = np.asarray(det, dtype=np.int64)
        emitted = det if emitted is None else np.asarray(emitted, dtype=np.int64)
        keep = det > 0  # a detection at the first row is the stream's start, not a transition
        det, emitted = det[keep], emitted[keep]
        pairs = match(true, det, tol)
        d = [int(emitted[j] - true[i]) for i, j in pairs]
        delays += d
        false += len(det) - len(pairs)
        out[f"{kind}s"] = len(true)
        out[f"{kind}s_detected"] = len(det)
        out[f"{kind}_recall"] = len(pairs) / len(true) if len(true) else float("nan")
        out[f"{kind}_delay_mean_min"] = float(np.mean(d)) if d else float("nan")
        out[f"{kind}_missed_rows"] = sorted(set(true.tolist()) - {int(true[i]) for i, _ in pairs})
        long = long_boundary_mask(lab, true)
        hit = np.zeros(len(true), dtype=bool)
        hit[[i for i, _ in pairs]] = True
        out[f"long_{kind}s"] = int(long.sum())
        out[f"long_{kind}_recall"] = float(hit[long].mean()) if long.any() else float("nan")
    days = len(lab) / rows_per_day
    out["mean_delay_min"] = float(np.mean(delays)) if delays else float("nan")
    out["false_events"] = false
    out["false_events_per_day"] = false / days if days > 0 else float("nan")
    out["days"] = days
    tp = int(((pred == 1) & (lab == 1)).sum())
    out["precision"] = tp / max(1, int(pred.sum()))
    out["recall"] = tp / max(1, int(lab.sum()))
    return out


# ------------------------------------------------------------------------------------------------------ streaming


def stream_test(served: Any, ts: np.ndarray, values: np.ndarray, settings: EventSettings, threshold: float,
                stream: str = "occupancy", progress: bool = False) -> dict[str, Any]:
    """Stream readings (raw units, [T, F]) through Engine.step and HysteresisEvents as the daemon does.

    served: a streamer.model_source.ServedModel (model + training mean/std). Returns per-row probability,
    per-row causal detector state ('active'), the event messages, and the row indices of their boundaries.
    """
    from tqdm import tqdm

    from streamer.detectors import HysteresisEvents, event_probability
    from streamer.engine import Chunk, Engine
    from streamer.model_source import default_event_run

    on = threshold if settings.on is None else settings.on
    off = min(on, threshold if settings.off is None else settings.off)
    run = default_event_run(served)
    det = HysteresisEvents(on=on, off=off, min_on=settings.min_on or run, min_off=settings.min_off or run,
                           kind="occupancy")
    engine = Engine.from_model(served.model, capacity=1, device="cpu")
    store = engine.store
    n = len(ts)
    prob = np.full(n, np.nan)
    active = np.zeros(n, dtype=np.int8)
    messages: list[dict[str, Any]] = []
    with tqdm(total=n, unit="reading", desc="occupancy", disable=not progress) as bar:
        for a in range(0, n, settings.chunk):
            b = min(a + settings.chunk, n)
            x = ((values[a:b] - served.mean) / served.std).astype(np.float32)
            (res,) = engine.step([Chunk(stream, ts[a:b], x)])
            p = event_probability(res.outputs["event"][:, 0].astype(np.float64))
            prob[a:b] = p
            st = (store.get_extra(stream) if stream in store else None) or {"events": det.init_state()}
            for t in range(b - a):  # one reading at a time only to record the state after each (causal)
                msgs = det.step(st["events"], ts[a + t : a + t + 1], p[t : t + 1], stream=stream)
                messages += msgs
                active[a + t] = 1 if st["events"]["active"] else 0
            store.set_extra(stream, st)
            bar.update(b - a)
    row = {int(t): i for i, t in enumerate(ts.tolist())}
    onsets = [m for m in messages if m["type"] == "onset"]
    offsets = [m for m in messages if m["type"] == "offset"]
    return {
        "prob": prob, "active": active, "messages": messages, "on": on, "off": off, "min_on": det.min_on,
        "min_off": det.min_off,
        "onset_rows": np.array([row[m["start"]] for m in onsets], dtype=np.int64),
        "onset_emitted": np.array([row[m["ts"]] for m in onsets], dtype=np.int64),
        "offset_rows": np.array([row[m["end"]] for m in offsets], dtype=np.int64),
        "offset_emitted": np.array([row[m["ts"]] for m in offsets], dtype=np.int64),
    }


# --------------------------------------------------------------------------------------------------------- outputs


def plot(path: Path, ts: np.ndarray, labels: np.ndarray, res: dict[str, Any], scores: dict[str, Any],
         baseline: np.ndarray | None = None) -> Path:
    """Probabilities, the on/off levels, detected events and the labels over the test period, and the wrong
    minutes of the model and of the memoryless baseline (PNG, Agg)."""
    from lab.evaluation.plots import _plt

    plt = _plt()
    minutes = (ts - ts[0]) / 60000.0 / 60.0  # hours since the first reading
    fig, ax = plt.subplots(3, 1, figsize=(13, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1, 0.6]})
    ax[0].fill_between(minutes, 0, labels, step="post", color="tab:green", alpha=0.2, lw=0, label="occupied (label)")
    ax[0].plot(minutes, res["prob"], lw=0.7, color="tab:blue", label="P(occupied)")
    ax[0].axhline(res["on"], color="black", ls="--", lw=0.7, label=f"on {res['on']:.2f}")
    if res["off"] < res["on"]:
        ax[0].axhline(res["off"], color="grey", ls=":", lw=0.7, label=f"off {res['off']:.2f}")
    ax[0].set_ylim(-0.05, 1.05)
    ax[0].set_ylabel("probability")
    ax[0].legend(loc="upper right", fontsize=7, ncol=4)
    ax[0].set_title(f"occupancy: accuracy {scores['accuracy']:.4f}, onset recall {scores['onset_recall']:.2f}, "
                    f"offset recall {scores['offset_recall']:.2f} (+-{scores['tolerance']} min), "
                    f"{scores['false_events_per_day']:.2f} false events/day", fontsize=9)
    ax[1].fill_between(minutes, 0, labels, step="post", color="tab:green", alpha=0.35, lw=0, label="label")
    ax[1].fill_between(minutes, 0, -res["active"], step="post", color="tab:orange", alpha=0.6, lw=0,
                       label="detected event")
    on_t, off_t = boundaries((labels >= 0.5).astype(np.int8))
    for rows, marker, color in ((res["onset_rows"], "^", "tab:red"), (res["offset_rows"], "v", "tab:purple")):
        rows = rows[rows > 0]
        ax[1].plot(minutes[rows], np.full(len(rows), -1.15), marker, color=color, ms=4, ls="none")
    for rows, marker in ((on_t, "^"), (off_t, "v")):
        ax[1].plot(minutes[rows], np.full(len(rows), 1.15), marker, color="black", ms=4, ls="none")
    ax[1].set_ylim(-1.4, 1.4)
    ax[1].set_yticks([-1, 1], ["detected", "label"])
    ax[1].legend(loc="upper right", fontsize=7)
    lab = labels >= 0.5
    rows = [("model", res["active"])] + ([("LDA", baseline)] if baseline is not None else [])
    names = []
    for k, (name, pred) in enumerate(rows):
        wrong = np.flatnonzero((np.asarray(pred) >= 0.5) != lab)
        ax[2].vlines(minutes[wrong], k - 0.35, k + 0.35, color="tab:red" if k == 0 else "tab:gray", lw=0.8)
        names.append(f"{name} ({len(wrong)})")
    ax[2].set_yticks(range(len(rows)), names)
    ax[2].set_ylim(-0.6, len(rows) - 0.4)
    ax[2].set_title("wrong minutes", fontsize=8, loc="left")
    ax[2].set_xlabel("hours since the first test reading")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_rows(path: Path, stamps: np.ndarray, labels: np.ndarray, res: dict[str, Any]) -> None:
    """Per-row outputs: ts (ms), probability, detector state, label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "probability", "active", "label"])
        for t, p, a, lab in zip(stamps.tolist(), res["prob"].tolist(), res["active"].tolist(), labels.tolist(),
                                strict=True):
            w.writerow([t, f"{p:.6f}", a, int(lab)])


def lda_predictions(meta: dict[str, Any], served: Any, values: np.ndarray) -> np.ndarray | None:
    """The checkpoint's memoryless LDA baseline's 0/1 decisions for readings [T, F] in raw units (None: none)."""
    from training.baselines import LinearDiscriminant

    d = (meta.get("baselines") or {}).get("lda")
    if not d:
        return None
    return (LinearDiscriminant.from_dict(d).logit((values - served.mean) / served.std) >= 0.0).astype(np.int8)


def lda_baseline(pred: np.ndarray | None, labels: np.ndarray, active: np.ndarray, tol: int) -> dict[str, Any] | None:
    """The baseline's scores on the same minutes as the model, and the wrong minutes the two share."""
    from training.baselines import error_overlap

    if pred is None:
        return None
    on, off = boundaries(pred)
    sc = event_scores(labels, pred, on, off, tol=tol)
    return {"method": "lda", "accuracy": sc["accuracy"], "onset_recall": sc["onset_recall"],
            "offset_recall": sc["offset_recall"], "long_onset_recall": sc["long_onset_recall"],
            "long_offset_recall": sc["long_offset_recall"], **error_overlap(labels, active, pred)}


# ------------------------------------------------------------------------------------------------------------ run


def training_config(train: Path, test: Path | None, base: dict[str, Any] | None = None,
                    epochs: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The training config dict: `base` (a TOML's content, default DEFAULT_TRAINING) with the given data files."""
    import copy

    cfg = copy.deepcopy(base if base is not None else DEFAULT_TRAINING)
    cfg.setdefault("data", {})["path"] = str(Path(train).resolve())
    if test is not None:
        cfg["data"]["test_path"] = str(Path(test).resolve())
    else:
        cfg["data"].pop("test_path", None)
    if epochs is not None:
        cfg.setdefault("train", {})["epochs"] = int(epochs)
    if seed is not None:
        cfg.setdefault("train", {})["seed"] = int(seed)
    return cfg


def train_for_eval(train: Path, test: Path, out: Path | None, config: Path | None, epochs: int | None,
                   seed: int | None, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train the event model (the built-in configuration or `config`) on `train`; its checkpoint and a summary."""
    import tempfile

    from training.pipeline import load_config
    from training.pipeline import run as train_run

    base = None
    if config is not None:
        base = load_config(config)
        base["_source"] = str(config)
    cfg = training_config(train, test, base, epochs, seed)
    work = Path(out) / "train" if out is not None else Path(tempfile.mkdtemp(prefix="occupancy-"))
    metrics = train_run(cfg, work, progress=progress)
    info = {"train_seconds": round(metrics["train_seconds"], 2), "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_run"], "val_accuracy": metrics.get("val_accuracy"),
            "pipeline_test_accuracy": metrics.get("test_accuracy")}
    if "ensemble" in metrics:
        info["ensemble"] = metrics["ensemble"]
    return work / "checkpoint", info


def event_checkpoint(checkpoint: Path) -> tuple[Any, dict[str, Any], Any]:
    """The served model, metadata and feature spec of an event checkpoint; ConfigError if it cannot be evaluated."""
    from streamer.checkpoints import read_meta
    from streamer.errors import ConfigError
    from streamer.model_source import load_checkpoint
    from training.data import FeatureSpec

    served, meta = load_checkpoint(checkpoint), read_meta(checkpoint)
    if "event" not in served.model.config.heads:
        raise ConfigError(f"{checkpoint}: the model has no event head (heads {served.model.config.heads})")
    spec = FeatureSpec.from_dict(meta["features"])
    if not spec.label:
        raise ConfigError(f"{checkpoint}: the feature spec has no label column")
    if spec.categorical:
        raise ConfigError(f"{checkpoint}: categorical inputs are not served by the daemon; retrain without them")
    return served, meta, spec


def one_series(path: Path, spec: Any, time_column: str | None) -> Any:
    """The test file's one labelled series (ConfigError when it holds several streams)."""
    from streamer.errors import ConfigError
    from training.data import load_csv

    series = load_csv(path, spec, time_column)
    if len(series) != 1:
        raise ConfigError(f"{path}: {len(series)} streams; one expected")
    return series[0]


def run(test: Path, out: Path | None = None, train: Path | None = None, checkpoint: Path | None = None,
        config: Path | None = None, settings: EventSettings | None = None, epochs: int | None = None,
        seed: int | None = None, progress: bool = True, plots: bool = True,
        time_column: str | None = None) -> dict[str, Any]:
    """The whole evaluation; returns the summary (also written to OUT/summary.json when out is given)."""
    from streamer.errors import ConfigError

    settings = settings or EventSettings()
    started = time.perf_counter()
    train_info: dict[str, Any] = {}
    if checkpoint is None:
        if train is None:
            raise ConfigError("give --train FILE (to train) or --checkpoint DIR")
        checkpoint, train_info = train_for_eval(train, test, out, config, epochs, seed, progress)
    t_train = time.perf_counter() - started
    served, meta, spec = event_checkpoint(checkpoint)
    threshold = float((meta.get("thresholds") or {}).get("event", 0.5))
    s = one_series(test, spec, time_column)
    labels = (s.labels >= 0.5).astype(np.int8)
    res = stream_test(served, s.ts, s.values, settings, threshold, progress=progress)
    scores = event_scores(labels, res["active"], res["onset_rows"], res["offset_rows"], res["onset_emitted"],
                          res["offset_emitted"], tol=settings.tolerance)
    scores["tolerance"] = settings.tolerance
    thr_acc = float(((res["prob"] >= res["on"]).astype(np.int8) == labels).mean())
    base_pred = lda_predictions(meta, served, s.values)
    baseline = lda_baseline(base_pred, labels, res["active"], settings.tolerance)
    summary: dict[str, Any] = {
        "accuracy": scores["accuracy"],
        "onset_recall": scores["onset_recall"],
        "offset_recall": scores["offset_recall"],
        "long_onset_recall": scores["long_onset_recall"],
        "long_offset_recall": scores["long_offset_recall"],
        "mean_delay_min": scores["mean_delay_min"],
        "false_events_per_day": scores["false_events_per_day"],
        "accuracy_at_threshold": thr_acc,
        "baseline_lda": baseline,
        "errors": int((res["active"] != labels).sum()),
        "rows": int(len(labels)),
        "details": {k: v for k, v in scores.items() if k not in ("accuracy",)},
        "threshold": threshold,
        "detector": {**settings.to_dict(), "on": res["on"], "off": res["off"], "min_on": res["min_on"],
                     "min_off": res["min_off"]},
        "checkpoint": str(checkpoint),
        "features": list(spec.numeric),
        "model": served.model.config.to_dict(),
        "train_file": None if train is None else str(train),
        "test_file": str(test),
        **train_info,
        "train_and_load_seconds": round(t_train, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if out is not None:
        write_outputs(Path(out), s.ts, labels, res, scores, base_pred, plots)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        (Path(out) / "summary.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    return json_safe(summary)


def write_outputs(out: Path, ts: np.ndarray, labels: np.ndarray, res: dict[str, Any], scores: dict[str, Any],
                  baseline: np.ndarray | None, plots: bool) -> None:
    """OUT/rows.csv (per minute), OUT/events.json (the messages) and, with plots, OUT/occupancy.png."""
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "rows.csv", ts, labels, res)
    (out / "events.json").write_text(json.dumps(res["messages"], indent=1) + "\n")
    if plots:
        plot(out / "occupancy.png", ts, labels, res, scores, baseline)

