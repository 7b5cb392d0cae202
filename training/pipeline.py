"""One training run from a TOML config: data, splits, normalisation, fit (one model, or `train.ensemble` seeds
merged into one by training.ensemble), evaluation, checkpoint, report."""

from __future__ import annotations

import copy
import time
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer import checkpoints
from streamer.detectors.events import event_probability
from streamer.errors import ConfigError
from streamer.models import ModelConfig, build_model, value_head
from training.baselines import (
    LinearDiscriminant,
    beat_ratio,
    error_overlap,
    event_baseline,
    forecast_baselines,
    repeat_last,
)
from training.data import FeatureSpec, Normalizer, Series, fingerprint, load_csv, load_npy, split_fractions, split_rows
from training.delay import DelayLine, export
from training.ensemble import merge
from training.evaluate import (
    calibrate_event_threshold,
    event_metrics,
    forecast_metrics,
    forecast_origins,
    forecast_targets,
    predict_stream,
)
from training.fit import History, TrainConfig, fit
from training.layout import Stream
from training.reports import plot_errors, plot_events, plot_forecast, plot_losses, plot_ridge, write_metrics
from training.ridge import RidgeFit, fit_nlinear

SECTIONS = {"data", "split", "model", "train", "report", "detectors", "events"}


def load_config(path: str | Path) -> dict[str, Any]:
    """The TOML config with data paths made absolute (relative to the config file)."""
    path = Path(path)
    try:
        cfg = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    unknown = set(cfg) - SECTIONS
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)} (known: {sorted(SECTIONS)})")
    data = cfg.setdefault("data", {})
    for key in ("path", "test_path"):
        if key in data:
            data[key] = str((path.parent / data[key]).resolve())
    if "path" not in data:
        raise ConfigError(f"{path}: [data] needs path")
    return cfg


def _spec(data: dict[str, Any]) -> FeatureSpec:
    cats = []
    for c in data.get("categorical", []):
        if isinstance(c, str):
            from training.data import DERIVED

            if c not in DERIVED:
                raise ConfigError(f"categorical {c!r} needs a cardinality ({{name=..., cardinality=...}})")
            cats.append((c, DERIVED[c]))
        else:
            cats.append((str(c["name"]), int(c["cardinality"])))
    if not data.get("numeric"):
        raise ConfigError("[data] needs numeric = [channel names]")
    return FeatureSpec(tuple(data["numeric"]), tuple(cats), data.get("label"))


def _load(path: str, spec: FeatureSpec, data: dict[str, Any]) -> Series:
    if path.endswith(".npy"):
        return load_npy(path, spec)
    series = load_csv(path, spec, data.get("time_column"), data.get("stream_column"))
    if len(series) != 1:
        raise ConfigError(f"{path}: {len(series)} streams; this runner trains on one stream per file")
    return series[0]


def _detectors(section: dict[str, Any], heads: tuple[str, ...]) -> dict[str, Any] | None:
    """The anomaly pipeline the checkpoint is to be served with: [detectors] over the product default (the
    daemon's own STREAMER_DETECTORS__* settings still win); None for a model without a head to score."""
    from pydantic import ValidationError

    from streamer.config import DetectorsSettings
    from streamer.detection import pipeline_config

    extra = set(section) - set(DetectorsSettings.model_fields)
    if extra:
        raise ConfigError(f"[detectors] unknown keys {sorted(extra)}")
    try:
        chosen = DetectorsSettings(**section)
    except ValidationError as exc:
        raise ConfigError(f"[detectors]: {exc}") from exc
    if value_head(heads) is None:
        if section:
            raise ConfigError(f"[detectors]: the model (heads {list(heads)}) has no forecast to score")
        return None
    return pipeline_config(chosen).to_dict()


def _event_min_run(section: dict[str, Any], task: str) -> int | None:
    """`[events] min_run`: readings beyond the threshold that start or end an event when served (None: unset)."""
    extra = set(section) - {"min_run"}
    if extra:
        raise ConfigError(f"[events] unknown keys {sorted(extra)}")
    if not section:
        return None
    if task != "event":
        raise ConfigError("[events] is for event models (a [data] label)")
    run = section["min_run"]
    if not isinstance(run, int) or isinstance(run, bool) or run < 1:
        raise ConfigError(f"[events] min_run must be an integer >= 1, got {run!r}")
    return run


def _train_config(section: dict[str, Any], task: str, device: str | None, epochs: int | None) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    extra = set(section) - known
    if extra:
        raise ConfigError(f"[train] unknown keys {sorted(extra)}")
    kw = dict(section, task=task)
    if device:
        kw["device"] = device
    if epochs:
        kw["epochs"] = epochs
    return TrainConfig(**kw)


def run(config_path: str | Path | dict[str, Any], out: str | Path, device: str | None = None,
        epochs: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train as the config says; writes OUT/checkpoint/ and OUT/report/; returns the metrics.

    config_path: a TOML file, or the same content as a dict (data paths absolute, as load_config makes them).
    """
    t_start = time.monotonic()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg, source = _read_config(config_path)
    d = _prepare_data(cfg)
    tc = _train_config(cfg.get("train", {}), d.task, device, epochs)
    tc.progress = progress
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available")
    arch = _architecture(dict(cfg.get("model", {})), d.spec, d.task)
    _check_combinations(tc, arch.context, d.task)
    detectors = _detectors(cfg.get("detectors", {}), arch.config.heads)
    event_run = _event_min_run(cfg.get("events", {}), d.task)
    fitted = _fit_all(arch, tc, d)
    report_dir = Path(out) / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = _fit_metrics(fitted, tc, d)
    if d.task == "forecast":
        thresholds = _forecast_report(fitted.model, d.series, d.x, d.val, d.test, arch.horizon, d.spec, cfg, metrics,
                                      report_dir)
        baselines = None
    else:
        thresholds, baselines = _event_outcome(fitted, tc, d, cfg, metrics, report_dir, event_run)
    _plot_fit(fitted, report_dir)
    meta = {
        "features": d.spec.to_dict(),
        "normalization": d.norm.to_dict(),
        "horizon": arch.horizon,
        "context": _context_meta(arch.context, len(d.spec.numeric), d.task) if arch.context else None,
        "thresholds": thresholds,
        "baselines": baselines,
        "detectors": detectors,
        "training": _training_meta(fitted, tc, source, d),
        "data_fingerprint": fingerprint([d.splits["train"]]),
        "metrics": metrics,
    }
    checkpoints.save(Path(out) / "checkpoint", fitted.model, meta)
    metrics["total_seconds"] = time.monotonic() - t_start
    write_metrics(report_dir, metrics)
    return metrics


def _read_config(config_path: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The config (a TOML file's, or a dict checked like one) and where it came from."""
    if not isinstance(config_path, dict):
        return load_config(config_path), str(config_path)
    cfg = copy.deepcopy(config_path)
    source = cfg.pop("_source", "<dict>")
    unknown = set(cfg) - SECTIONS
    if unknown or "path" not in cfg.get("data", {}):
        raise ConfigError(f"config dict: unknown sections {sorted(unknown)} or no [data] path")
    return cfg, str(source)


@dataclass
class _Data:
    """The run's rows: the series normalised by its training rows, and the train, validation and test streams."""

    spec: FeatureSpec
    task: str
    series: Series
    splits: dict[str, Any]
    norm: Normalizer
    x: np.ndarray
    train: list[Stream]
    val: Stream
    test: Stream


def _prepare_data(cfg: dict[str, Any]) -> _Data:
    """[data] and [split]: load, split, normalise on the training rows; the test rows from the split or test_path."""
    data, split = cfg["data"], cfg.get("split", {})
    spec = _spec(data)
    series = _load(data["path"], spec, data)
    if "rows" in split:
        sp = split_rows(series, {k: tuple(v) for k, v in split["rows"].items()})
    else:
        sp = split_fractions(series, float(split.get("val_fraction", 0.15)), float(split.get("test_fraction", 0.0)))
    if "train" not in sp or "val" not in sp:
        raise ConfigError("[split] must give train and val rows")
    norm = Normalizer.fit([sp["train"]])
    x = norm.apply(series.values)
    labels = series.labels.astype(np.float32) if series.labels is not None else None

    def rows(name: str) -> Stream:
        return Stream(series.stream, x, series.categorical, labels, sp[name].lo, sp[name].hi)

    if "test_path" in data:
        ts = _load(data["test_path"], spec, data)
        test = Stream(ts.stream, norm.apply(ts.values), ts.categorical,
                      None if ts.labels is None else ts.labels.astype(np.float32), 0, len(ts))
    elif "test" in sp:
        test = rows("test")
    else:
        raise ConfigError("no test data: give [split] rows.test or [data] test_path")
    return _Data(spec, "event" if spec.label else "forecast", series, sp, norm, x, [rows("train")], rows("val"), test)


@dataclass
class _Architecture:
    """The model's architecture, and the delay line's length (0: none) and the forecast horizon it was built for."""

    config: ModelConfig
    context: int
    horizon: int


def _architecture(mcfg: dict[str, Any], spec: FeatureSpec, task: str) -> _Architecture:
    """[model]: the served model's config (a delay line widens the state by `context` readings)."""
    context = int(mcfg.pop("context", 0))
    learned = int(mcfg.pop("hidden", 64))
    heads = ("forecast",) if task == "forecast" else ("event",)
    horizon = int(mcfg.pop("horizon", 1))
    hidden = DelayLine.hidden_for(context, len(spec.numeric), learned) if context else learned
    try:
        config = ModelConfig(n_features=len(spec.numeric), hidden=hidden, heads=heads, horizon=horizon,
                             categorical=tuple((c, max(1, min(16, (c + 1) // 2))) for _, c in spec.categorical),
                             **mcfg)
    except TypeError as exc:
        raise ConfigError(f"[model]: {exc}") from exc
    return _Architecture(config, context, horizon)


def _check_combinations(tc: TrainConfig, context: int, task: str) -> None:
    """Refuse [train] settings that do not combine with the model or the task, naming them."""
    if context and tc.ensemble > 1 and task == "forecast":
        raise ConfigError("train.ensemble > 1 does not combine with a forecaster's model.context (a delay line)")
    if tc.refit and task != "event":
        raise ConfigError("train.refit is for event models")
    if tc.ridge and (not context or task != "forecast"):
        raise ConfigError("train.ridge solves a forecasting delay line's map: it needs model.context and no label")


@dataclass
class _Fitted:
    """The served model (one member, or the members merged) with what its fitting recorded."""

    model: Any
    histories: list[History]
    closed_forms: list[dict[str, Any]]
    refit_histories: list[History]
    threshold: float | None = None  # with a refit: the event threshold served
    first_val_accuracy: float | None = None  # with a refit: the first fit's accuracy on the validation rows


def _fit_all(arch: _Architecture, tc: TrainConfig, d: _Data) -> _Fitted:
    """Fit every ensemble member (seeds seed, seed + 1, ...) and merge them; with a refit, the served threshold."""
    members, histories, first_members, refit_histories, closed_forms = [], [], [], [], []
    for i in range(tc.ensemble):
        member = _fit_member(arch.config, replace(tc, seed=tc.seed + i), arch.context, d.x, d.train, [d.val])
        members.append(member.model)
        histories.append(member.history)
        if member.closed is not None:
            closed_forms.append(member.closed.to_dict())
        if member.first is not None:
            first_members.append(member.first)
            refit_histories.append(member.refit_history)
    # one member: itself; several: one model that is their mean, step for step (training.ensemble)
    fitted = _Fitted(members[0] if len(members) == 1 else merge(members), histories, closed_forms, refit_histories)
    if tc.refit:
        # validation rows are in the refit's training data: the threshold is the first fit's (or fixed)
        first = first_members[0] if len(first_members) == 1 else merge(first_members)
        v = d.val
        fp = _event_probabilities(first, v)
        fitted.threshold = calibrate_event_threshold(fp[v.lo : v.hi], v.labels[v.lo : v.hi]) \
            if tc.refit_threshold == "first" else float(tc.refit_threshold)
        fitted.first_val_accuracy = _accuracy(fp, v, fitted.threshold)
    return fitted


def _fit_metrics(fitted: _Fitted, tc: TrainConfig, d: _Data) -> dict[str, Any]:
    """What the fitting did: time, epochs, stopping; the closed form, the refit and the ensemble where used."""
    hist = fitted.histories[0]
    metrics: dict[str, Any] = {"task": d.task,
                               "train_seconds": sum(h.seconds for h in fitted.histories + fitted.refit_histories),
                               "best_epoch": hist.best_epoch + 1, "epochs_run": len(hist.train_loss),
                               "stopped": hist.stopped}
    if fitted.closed_forms:
        metrics["closed_form"] = fitted.closed_forms[0]
    if tc.refit:
        metrics["refit"] = {"epochs": [len(h.train_loss) for h in fitted.refit_histories],
                            "threshold": fitted.threshold, "rows": [d.train[0].lo, d.val.hi],
                            "note": "val_* metrics are in-sample: the served model was refit on the validation rows"}
    if len(fitted.histories) > 1:
        metrics["ensemble"] = {"members": len(fitted.histories),
                               "seeds": [tc.seed + i for i in range(len(fitted.histories))],
                               "best_epochs": [h.best_epoch + 1 for h in fitted.histories],
                               "epochs_run": [len(h.train_loss) for h in fitted.histories]}
    return metrics


def _event_outcome(fitted: _Fitted, tc: TrainConfig, d: _Data, cfg: dict[str, Any], metrics: dict[str, Any],
                   report_dir: Path, event_run: int | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An event model's report beside the memoryless LDA baseline: the served thresholds and the baselines."""
    # the memoryless baseline learns from the rows the served model learned from (with a refit: validation too)
    lda = _fit_lda(_train_and_val(d.train[0], d.val) if tc.refit else d.train)
    baselines = {"lda": lda.to_dict()} if lda is not None else None
    thresholds = _event_report(fitted.model, d.val, d.test, cfg, metrics, report_dir, fitted.threshold, lda)
    if event_run is not None:  # the served event detector's run length (min_on = min_off)
        thresholds["event_min_run"] = metrics["event_min_run"] = event_run
    # out of sample on the validation rows for both: the first fit, and an LDA fitted on the training rows only
    lda_train = _fit_lda(d.train) if tc.refit else lda
    if lda_train is not None:
        metrics["lda_val_accuracy"] = _accuracy(lda_train.logit(d.val.x), d.val, 0.0)
    if fitted.first_val_accuracy is not None:
        metrics["val_accuracy_first_fit"] = fitted.first_val_accuracy
    return thresholds, baselines


def _plot_fit(fitted: _Fitted, report_dir: Path) -> None:
    """The loss curves (with the refit's) and the closed form's validation MSE by ridge."""
    hist = fitted.histories[0]
    if hist.train_loss:
        plot_losses(report_dir, hist.to_dict(), fitted.refit_histories[0].to_dict() if fitted.refit_histories else None)
    if fitted.closed_forms:
        plot_ridge(report_dir, fitted.closed_forms[0]["val_mse_by_ridge"], fitted.closed_forms[0]["ridge"])


def _context_meta(context: int, n_features: int, task: str) -> dict[str, Any]:
    """The checkpoint's description of a delay line in the recurrent state."""
    return {"kind": "delay_line", "length": context, "units": context * n_features,
            "note": "the last `length` readings live in the first units of the recurrent state"
                    + ("" if task == "forecast" else ", the event head's linear path (started at the "
                       "LDA of the training rows)") + "; the engine serves the model unchanged"}


def _training_meta(fitted: _Fitted, tc: TrainConfig, source: str, d: _Data) -> dict[str, Any]:
    """The checkpoint's record of how it was trained: config, histories, source, splits."""
    meta = {"config": asdict(tc), "history": fitted.histories[0].to_dict(), "source_config": source,
            "splits": {k: [v.lo, v.hi] for k, v in d.splits.items()}}
    if fitted.refit_histories:
        meta["refit_histories"] = [h.to_dict() for h in fitted.refit_histories]
    if len(fitted.histories) > 1:
        meta["member_histories"] = [h.to_dict() for h in fitted.histories]
    return meta


@dataclass
class _Member:
    """One fitted model; with a refit, also the first fit (whose threshold is served) and the refit's history."""

    model: Any
    history: History
    closed: RidgeFit | None = None
    first: Any = None
    refit_history: History | None = None


def _fit_member(model_cfg: ModelConfig, mc: TrainConfig, context: int, x: np.ndarray, train: list[Stream],
                val: list[Stream]) -> _Member:
    """Build, fit and export one model; with train.refit, fit a fresh one on train + validation for the epochs
    (and learning rates) early stopping chose on the validation tail."""
    torch.manual_seed(mc.seed)
    model, delay, closed = _build_with_context(model_cfg, context, mc.ridge, x, train, val)
    if closed is not None and mc.epochs == 0:
        history = History(stopped="closed form only (train.epochs = 0)")
    else:
        history = fit(model, mc, train, val, delay, keep_initial=closed is not None)
    export(model)
    if not mc.refit:
        return _Member(model.cpu().eval(), history, closed)
    first = model.cpu().eval()
    torch.manual_seed(mc.seed)
    both = _train_and_val(train[0], val[0])
    model, delay, _ = _build_with_context(model_cfg, context, (), x, both, [])
    refit_history = fit(model, mc, both, [], delay, lr_plan=history.lr[: history.best_epoch + 1])
    export(model)
    return _Member(model.cpu().eval(), history, closed, first, refit_history)


def _build_with_context(model_cfg: ModelConfig, context: int, ridges: tuple[float, ...], x: np.ndarray,
                        train: list[Stream], val: list[Stream]) -> tuple[Any, DelayLine | None, RidgeFit | None]:
    """A fresh model; with model.context, its delay line: a forecaster's NLinear head (solved in closed form when
    ridges are given), an event model's linear path started at the LDA of the rows it is fitted on."""
    model = build_model(model_cfg)
    if not context:
        return model, None, None
    if "event" not in model_cfg.heads:
        return (model, *_delay_line(model, context, ridges, x, train[0], val[0]))
    lda = _fit_lda(train)
    if lda is None:
        raise ConfigError("model.context on an event model starts its linear path at the LDA of the training "
                          "rows, which needs both classes there")
    delay = DelayLine(model, context)
    delay.parametrize_event_head(torch.from_numpy(lda.weights), lda.bias)
    return model, delay, None


def _delay_line(model, context: int, ridges: tuple[float, ...], x: np.ndarray, train: Stream,
                val: Stream) -> tuple[DelayLine, RidgeFit | None]:
    """Install the delay line and its NLinear head; with a ridge grid, the head's map solved in closed form."""
    delay = DelayLine(model, context)
    head = delay.parametrize_head()
    if not ridges:
        return delay, None
    closed = fit_nlinear(x, (train.lo, train.hi), (val.lo, val.hi), context, model.config.horizon, ridges)
    with torch.no_grad():
        head.A.copy_(torch.from_numpy(closed.A).to(head.A))
    return delay, closed


def _forecast_report(model, series, x, val: Stream, test: Stream, horizon: int, spec: FeatureSpec,
                     cfg: dict[str, Any], metrics: dict[str, Any], report_dir: Path) -> dict[str, Any]:
    end = max(val.hi, test.hi) if test.x is x else val.hi
    out = predict_stream(model, Stream(series.stream, x), end=end, heads=("forecast",))["forecast"]
    test_out = out if test.x is x else predict_stream(model, test, heads=("forecast",))["forecast"]
    period = cfg.get("report", {}).get("period")
    org = forecast_origins(test.lo, test.hi, horizon)
    m = forecast_metrics(test_out[org], forecast_targets(test.x, org, horizon))
    metrics.update(test_mse=m["mse"], test_mae=m["mae"], test_windows=len(org))
    metrics.update(forecast_baselines(test.x, org, horizon, period))
    vorg = forecast_origins(val.lo, val.hi, horizon)
    vm = forecast_metrics(out[vorg], forecast_targets(x, vorg, horizon))
    metrics.update(val_mse=vm["mse"], val_mae=vm["mae"])
    metrics["beats_repeat_mse_by"] = beat_ratio(metrics["repeat_mse"], m["mse"])
    metrics["beats_repeat_mae_by"] = beat_ratio(metrics["repeat_mae"], m["mae"])
    if period:
        metrics["beats_seasonal_mse_by"] = beat_ratio(metrics["seasonal_mse"], m["mse"])
        metrics["beats_seasonal_mae_by"] = beat_ratio(metrics["seasonal_mae"], m["mae"])
    # anomaly score: mean squared one-step-ahead error over channels, calibrated on validation rows
    one = np.arange(val.lo - 1, val.hi - 1)
    scores = ((out[one, 0, :] - x[one + 1]) ** 2).mean(axis=1)
    thresholds = {"score": "one_step_mse", "q0.99": float(np.quantile(scores, 0.99)),
                  "q0.999": float(np.quantile(scores, 0.999))}
    plot_errors(report_dir, scores, {k: v for k, v in thresholds.items() if k != "score"},
                "one-step-ahead squared error, mean over channels (z-score units)")
    ch = cfg.get("report", {}).get("plot_channel", spec.numeric[-1])
    c = spec.numeric.index(ch) if ch in spec.numeric else 0
    t0 = int(vorg[len(vorg) // 2])
    plot_forecast(report_dir, x[max(0, t0 - 2 * horizon) : t0 + 1, c], x[t0 + 1 : t0 + 1 + horizon, c],
                  out[t0, :, c], repeat_last(x, np.array([t0]), horizon)[0, :, c], spec.numeric[c])
    return thresholds


def _train_and_val(train: Stream, val: Stream) -> list[Stream]:
    """The refit's training streams: one stream over train + validation rows when they are adjacent, else both."""
    if train.x is val.x and train.hi == val.lo:
        return [replace(train, hi=val.hi)]
    return [train, val]


def _event_probabilities(model, stream: Stream) -> np.ndarray:
    """P(event) for rows [0, stream.hi) from one causal pass from row 0."""
    return event_probability(predict_stream(model, stream, end=stream.hi, heads=("event",))["event"][:, 0])


def _accuracy(scores: np.ndarray, rows: Stream, threshold: float) -> float:
    """Share of the stream's scored rows where (score >= threshold) is the label (scores cover rows from 0)."""
    return float(((scores[rows.lo : rows.hi] >= threshold) == (rows.labels[rows.lo : rows.hi] >= 0.5)).mean())


def _fit_lda(streams: list[Stream]) -> LinearDiscriminant | None:
    """The memoryless baseline fitted on the scored rows of the given streams."""
    return LinearDiscriminant.fit(np.concatenate([s.x[s.lo : s.hi] for s in streams]),
                                  np.concatenate([s.labels[s.lo : s.hi] for s in streams]))


def _event_report(model, val: Stream, test: Stream, cfg: dict[str, Any], metrics: dict[str, Any],
                  report_dir: Path, threshold: float | None = None,
                  lda: LinearDiscriminant | None = None) -> dict[str, Any]:
    """Test metrics at the threshold calibrated on `val` (or the given one, e.g. after a refit), beside baselines."""
    tol = int(cfg.get("report", {}).get("tolerance", 2))
    vp = _event_probabilities(model, val)
    thr = calibrate_event_threshold(vp[val.lo : val.hi], val.labels[val.lo : val.hi]) if threshold is None \
        else float(threshold)
    tp = event_probability(predict_stream(model, test, heads=("event",))["event"][:, 0])
    lab = test.labels[test.lo : test.hi]
    prob = tp[test.lo : test.hi]
    m = event_metrics(prob, lab, thr, tol)
    metrics.update({f"test_{k}": v for k, v in m.items()})
    metrics.update(onset_recall=m["onset_recall"], offset_recall=m["offset_recall"], threshold=thr,
                   tolerance_steps=tol, test_accuracy_at_0_5=event_metrics(prob, lab, 0.5, tol)["accuracy"])
    metrics["majority_accuracy"] = float(max((lab >= 0.5).mean(), (lab < 0.5).mean()))
    metrics["repeat_label_accuracy"] = event_baseline(lab, 1)
    metrics["test_errors"] = int(((prob >= thr) != (lab >= 0.5)).sum())
    if lda is not None:
        lp = event_probability(lda.logit(test.x[test.lo : test.hi]))
        lm = event_metrics(lp, lab, 0.5, tol)
        metrics.update(lda_accuracy=lm["accuracy"], lda_onset_recall=lm["onset_recall"],
                       lda_offset_recall=lm["offset_recall"],
                       beats_lda_by=beat_ratio(1.0 - lm["accuracy"], 1.0 - m["accuracy"]))
        overlap = error_overlap(lab, (prob >= thr).astype(np.int8), (lp >= 0.5).astype(np.int8))
        metrics.update(lda_errors=overlap["baseline_errors"], shared_errors_with_lda=overlap["shared_errors"])
    metrics["val_accuracy"] = _accuracy(vp, val, thr)
    plot_events(report_dir, prob, lab, thr)
    plot_errors(report_dir, vp[val.lo : val.hi], {"threshold": thr}, "validation P(event)")
    return {"score": "event_probability", "event": thr}
