"""`streamer eval nab`: stream every NAB series once, in order, through the engine and detectors; score with NAB.

The model is one small recurrent forecaster (next normalised value) shared by every series, pre-trained only
on the probationary rows (first 15%, at most 750) of the files under the data folder, as NAB's rules allow; it
is then frozen and every series is streamed in chunks through `Engine.step` exactly as the daemon does, with
the detector state of each stream kept in the state store's extras. One configuration serves every series.
The pipeline is the daemon's (streamer.detection.pipeline_config: STREAMER_DETECTORS__* settings over the product
default, chosen by `streamer eval nab --cv`); by default both views of AnomalyPipeline are on: the seasonal one takes
the forecast error as the smaller of the model's and the value one day earlier's, the value view scores the
value's own deviation from the stream's running distribution as a second likelihood.

With `--checkpoint`, no model is pre-trained: the checkpoint is streamed as `streamer serve` runs it
(`stream_served`). Either way the pipeline is the one streamer.detection.pipeline_config decides for the daemon.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab.evaluation import nab_scorer as ns
from streamer.detection import PRODUCT_PIPELINE, StreamDetectors
from streamer.detectors import AnomalyPipeline, OnlineNormaliser, PipelineConfig
from streamer.detectors.batched import fired_rows, score_batch
from streamer.engine import Chunk, Engine
from streamer.errors import ConfigError
from streamer.model_source import ServedModel
from streamer.models import ModelConfig, RecurrentModel, build_model

DETECTOR = "streamer"


@dataclass(frozen=True)
class NabConfig:
    """The one configuration of the NAB run: model, pre-training, streaming and the detector pipeline."""

    family: str = "gru"
    hidden: int = 32
    layers: int = 1
    seed: int = 0
    epochs: int = 80  # full-batch Adam steps over the probationary segments
    lr: float = 3e-3
    chunk: int = 256  # readings per stream per engine step (any chunking gives the same outputs)
    # the product default (streamer.detection.pipeline_config decides it for the daemon and for `eval nab`)
    pipeline: PipelineConfig = PRODUCT_PIPELINE

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


@dataclass
class Series:
    """One NAB data file: name '<category>/<file>.csv', timestamps (text and ms), values."""

    name: str
    stamps: list[str]
    ts: np.ndarray
    values: np.ndarray


def load_series(corpus: list[ns.FileTruth], data_dir: Path) -> list[Series]:
    """Values and ms timestamps of every corpus file."""
    root = Path(data_dir) / "data" if (Path(data_dir) / "data").is_dir() else Path(data_dir)
    out = []
    for truth in corpus:
        stamps, values = ns.read_series(root / truth.name)
        ts = np.array([s.strip() for s in stamps], dtype="datetime64[ms]").astype(np.int64)
        out.append(Series(truth.name, stamps, ts, values))
    return out


def pretrain(series: list[Series], cfg: NabConfig, progress: bool = False) -> RecurrentModel:
    """Forecaster fitted on the probationary rows only, normalised exactly as the stream normaliser does."""
    torch.manual_seed(cfg.seed)
    mcfg = ModelConfig(family=cfg.family, n_features=1, hidden=cfg.hidden, layers=cfg.layers,
                       heads=("forecast",), horizon=1)
    model = build_model(mcfg)
    norm = OnlineNormaliser(1, halflife=cfg.pipeline.norm_halflife)
    seqs = []
    for s in series:
        p = ns.probationary_rows(len(s.values))
        z = norm.step(norm.init_state(), s.ts[:p], s.values[:p, None])[:, 0]
        seqs.append(z)
    T = max(len(z) - 1 for z in seqs)
    x = np.zeros((len(seqs), T, 1), dtype=np.float32)
    y = np.zeros((len(seqs), T), dtype=np.float32)
    mask = np.zeros((len(seqs), T), dtype=bool)
    for i, z in enumerate(seqs):
        x[i, : len(z) - 1, 0], y[i, : len(z) - 1], mask[i, : len(z) - 1] = z[:-1], z[1:], True
    xt, yt, mt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    from tqdm import tqdm

    model.train()
    for _ in tqdm(range(cfg.epochs), desc="pre-train", disable=not progress, leave=False):
        out, _ = model(xt, strategy="segments")  # padded to one length (dense, fast); padding is masked out
        pred = out["forecast"][:, :, 0, 0]
        loss = torch.nn.functional.smooth_l1_loss(pred[mt], yt[mt])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def stream_corpus(series: list[Series], model: RecurrentModel, pipeline: AnomalyPipeline, chunk: int,
                  progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Every series once, in order, in chunks through Engine.step and the pipeline (state in the store's extras).

    Returns per series: score (final, [0, 1]), fired (alert onsets), likelihood, raw, ratio, forecast, x_norm.
    """
    from tqdm import tqdm

    engine = Engine.from_model(model, capacity=max(1, len(series)), device="cpu")
    store = engine.store
    keys = ("score", "fired", "likelihood", "raw", "ratio", "forecast", "x_norm")
    parts: dict[str, dict[str, list[np.ndarray]]] = {s.name: {k: [] for k in keys} for s in series}
    total = sum(len(s.values) for s in series)
    with tqdm(total=total, unit="reading", desc="nab", disable=not progress) as bar:
        for a in range(0, max(len(s.values) for s in series), chunk):
            active = [s for s in series if a < len(s.values)]
            sts = [(store.get_extra(s.name) if s.name in store else None) or pipeline.init_state() for s in active]
            sizes = [len(s.values[a:a + chunk]) for s in active]
            xns = np.split(pipeline.prepare_streams(sts, np.cumsum([0, *sizes]), np.concatenate(
                [s.values[a:a + chunk, None] for s in active])), np.cumsum(sizes)[:-1])
            states = {s.name: (st, xn, s.ts[a:a + chunk]) for s, st, xn in zip(active, sts, xns, strict=True)}
            results = engine.step([Chunk(s.name, s.ts[a:a + chunk], xn) for s, xn in zip(active, xns, strict=True)])
            names = [res.stream for res in results]
            forecasts = [res.outputs["forecast"][:, 0, :] for res in results]
            lengths = [len(states[n][2]) for n in names]
            out = score_batch(pipeline, [states[n][0] for n in names], names, np.cumsum([0, *lengths]),
                              np.concatenate([states[n][2] for n in names]),
                              np.concatenate([states[n][1] for n in names]), np.concatenate(forecasts))
            row = 0
            for name, fc, n in zip(names, forecasts, lengths, strict=True):
                st, xn, _ = states[name]
                store.set_extra(name, st)
                p = parts[name]
                for k in ("score", "fired", "likelihood", "raw", "ratio"):
                    p[k].append(getattr(out, k)[row:row + n])
                p["forecast"].append(fc[:, 0])
                p["x_norm"].append(xn[:, 0])
                row += n
            bar.update(sum(lengths))
    return {n: {k: np.concatenate(v) for k, v in p.items()} for n, p in parts.items()}


def stream_served(series: list[Series], served: ServedModel, pipeline: PipelineConfig,
                  chunk: int) -> dict[str, dict[str, Any]]:
    """Every series through a checkpoint as `streamer serve` runs it: readings z-scored with the checkpoint's
    training statistics, `Engine.step_grouped`, then the daemon's StreamDetectors with `pipeline`.

    Returns per series: score [T] (the anomaly score of each reading), fired [T] (alert onsets), alerts (the
    alert messages the daemon would publish, in order).
    """
    engine = Engine.from_model(served.model, capacity=max(1, len(series)), device="cpu")
    cfg = served.model.config
    detectors = StreamDetectors(cfg.n_features, cfg.heads, served.name, served.version,
                                channel_names=list(served.channels) if served.channels else None, pipeline=pipeline)
    if detectors.anomalies is None:
        raise ConfigError(f"{served.name}: no forecast or reconstruction head to score (heads {list(cfg.heads)})")
    out: dict[str, dict[str, Any]] = {s.name: {"score": [], "alerts": []} for s in series}
    for a in range(0, max(len(s.values) for s in series), chunk):
        now = [s for s in series if a < len(s.values)]
        rows = [s.values[a : a + chunk].astype(np.float32).reshape(-1, cfg.n_features) for s in now]
        offsets = np.cumsum([0, *map(len, rows)])
        values = (np.concatenate(rows) - served.mean) / served.std
        ts = np.concatenate([s.ts[a : a + chunk] for s in now])
        found = detectors.step(engine.step_grouped([s.name for s in now], offsets, ts, values), engine.store)
        for i, s in enumerate(now):
            out[s.name]["score"].append(found.scores[offsets[i] : offsets[i + 1]])
        for alert in found.alerts:
            out[alert["stream"]]["alerts"].append(alert)
    for s in series:
        r = out[s.name]
        r["score"] = np.concatenate(r["score"])
        r["fired"] = fired_rows(s.ts, r["alerts"])
    return out


def write_results(out_dir: Path, series: list[Series], corpus: list[ns.FileTruth], scores: list[np.ndarray],
                  detector: str = DETECTOR) -> None:
    """NAB's layout: <out>/<detector>/<category>/<detector>_<name>.csv with timestamp,value,anomaly_score,label."""
    for s, truth, sc in zip(series, corpus, scores, strict=True):
        cat, name = s.name.split("/", 1)
        path = Path(out_dir) / detector / cat / f"{detector}_{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        label = np.zeros(len(s.values), dtype=int)
        for b, e in truth.windows:
            label[b : e + 1] = 1
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "value", "anomaly_score", "label"])
            for t, v, a, lab in zip(s.stamps, s.values.tolist(), sc.tolist(), label.tolist(), strict=True):
                w.writerow([t, repr(v), f"{a:.6f}", lab])


def score_all(scores: list[np.ndarray], fired: list[np.ndarray], corpus: list[ns.FileTruth],
              own: float) -> dict[str, Any]:
    """NAB scores with the swept threshold per profile, and at the pipeline's own alerts (binary detections)."""
    out: dict[str, Any] = {}
    for prof in ns.PROFILES:
        r = ns.sweep(scores, corpus, prof)
        out[prof] = round(r.score, 3)
        out.setdefault("thresholds", {})[prof] = r.threshold
    out["own_threshold"] = {p: round(ns.score_at(fired, corpus, 0.5, p), 3) for p in ns.PROFILES}
    out["own_threshold"]["alert_on"] = own
    return out


def plot_best_worst(out_dir: Path, series: list[Series], corpus: list[ns.FileTruth], scores: list[np.ndarray],
                    threshold: float, k: int = 3) -> list[Path]:
    """best.png and worst.png: the k series with the highest and lowest standard-profile file score."""
    from lab.evaluation.plots import plot_series_panel

    fs = ns.file_scores(scores, corpus, threshold, "standard")
    order = np.argsort(fs)
    paths = []
    for label, idx in (("worst", order[:k]), ("best", order[::-1][:k])):
        panels = [{"name": series[i].name, "values": series[i].values, "score": scores[i], "threshold": threshold,
                   "windows": corpus[i].windows, "probation": corpus[i].probation,
                   "subtitle": f"S_f = {fs[i]:+.2f} (standard)"} for i in idx]
        paths.append(plot_series_panel(Path(out_dir) / f"{label}.png", panels,
                                       f"NAB, {label} {k} series (standard profile, swept threshold)"))
    return paths


def run(data_dir: Path, out_dir: Path, cfg: NabConfig | None = None, progress: bool = True,
        plots: bool = True, served: ServedModel | None = None) -> dict[str, Any]:
    """The whole evaluation; returns the summary written to <out>/summary.json.

    Without `served`, one forecaster is pre-trained on the probationary rows and streamed as described above;
    with it, that checkpoint is streamed as the daemon serves it (`stream_served`). Either way through
    `cfg.pipeline`, which the summary records under 'detectors' (the form of a checkpoint's metadata).
    """
    cfg = cfg or NabConfig()
    started = time.perf_counter()
    corpus = ns.load_corpus(Path(data_dir))
    series = load_series(corpus, Path(data_dir))
    if served is None:
        model = pretrain(series, cfg, progress=progress)
        t_train = time.perf_counter() - started
        pipeline = AnomalyPipeline(1, cfg.pipeline, model=f"{cfg.family}-h{cfg.hidden}-nab", version="1")
        res = stream_corpus(series, model, pipeline, cfg.chunk, progress=progress)
    else:
        t_train = 0.0
        res = stream_served(series, served, cfg.pipeline, cfg.chunk)
    scores = [res[s.name]["score"] for s in series]
    fired = [res[s.name]["fired"] for s in series]
    write_results(Path(out_dir), series, corpus, scores)
    summary = score_all(scores, fired, corpus, cfg.pipeline.alert_on)
    if plots:
        plot_best_worst(Path(out_dir), series, corpus, scores, summary["thresholds"]["standard"])
    summary.update(files=len(series), rows=int(sum(len(s.values) for s in series)), windows=sum(
        len(t.windows) for t in corpus), pretrain_seconds=round(t_train, 2),
        seconds=round(time.perf_counter() - started, 2), detector=DETECTOR, config=cfg.to_dict(),
        detectors=cfg.pipeline.to_dict(), checkpoint=None if served is None else {
            "name": served.name, "version": served.version})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
