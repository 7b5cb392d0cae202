"""`streamer eval nab --cv K`: the detector pipeline's tunable choices made honestly, by K-fold cross-validation.

The development files are split into K folds by file, stratified by category (`split_folds`). For each fold,
every configuration of the declared search space (`SEARCH_SPACE`) and its alert threshold (NAB's sweep) are
chosen on the other K-1 folds' files alone, then applied to the held fold's files. `cv_standard` is one NAB
standard score over all files, each file's detections coming from its own fold's choice; `in_sample_standard`
is the same search made (and scored) on all files, as the plain `streamer eval nab` figures are.

The model and its pre-training are fixed (one forecaster pre-trained on the probationary rows, no labels), and
so is the input normalisation it depends on (norm_halflife). The engine's forecasts depend only on the
normalised readings, so every file is streamed through the engine once and only the pipeline's scoring is run
again per configuration (`rescore`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lab.evaluation import nab, selection
from lab.evaluation import nab_scorer as ns
from streamer.detectors import AnomalyPipeline, PipelineConfig
from streamer.detectors.batched import Scored, score_batch
from streamer.detectors.seasonal import DAY_MS, WEEK_MS
from streamer.errors import ConfigError

# The declared search space: axes of PipelineConfig overrides; the configurations are their product (60 here).
# The seasonal views: none; a day (the last 300 readings); a day and a week (350 readings reaching a week back);
# each of the two with a half-hour slack. long_halflife is fixed at 8000 (every fold of every earlier run chose it
# over 2000), which keeps the run under 10 minutes here.
# Every option sets every seasonal field (the options override the product default, which has them all on).
_NONE = {"season_ms": 0, "season_also_ms": 0, "season_slack_ms": 0}
_DAY = {"season_ms": DAY_MS, "season_max": 300, "season_also_ms": 0, "season_slack_ms": 0}
_WEEK = {"season_also_ms": WEEK_MS, "season_also_max": 350}
_SLACK = {"season_slack_ms": 30 * 60_000}
SEARCH_SPACE: selection.Space = (
    (_NONE, _DAY, {**_DAY, **_SLACK}, {**_DAY, **_WEEK}, {**_DAY, **_WEEK, **_SLACK}),
    ({"value_short": 0}, {"value_short": 4}),
    ({"short": 4}, {"short": 8}),
    ({"suppress": 50}, {"suppress": 100}, {"suppress": 150}),
)
FIXED = ("norm_halflife",)  # the pre-training normalises with it: never searched
PROFILE = "standard"


def configurations(space: selection.Space = SEARCH_SPACE) -> list[dict[str, Any]]:
    """Every configuration of a search space over PipelineConfig (never the fixed normalisation)."""
    return selection.configurations(space, set(PipelineConfig().to_dict()), FIXED)



def _batch(series: list[nab.Series], streamed: dict[str, dict[str, np.ndarray]], config: PipelineConfig) -> Scored:
    """Every series scored under `config` as one batch, from the normalised readings and forecasts of one stream."""
    pipe = AnomalyPipeline(1, config)
    lengths = [len(s.ts) for s in series]
    return score_batch(pipe, [pipe.init_state() for _ in series], [s.name for s in series], np.cumsum([0, *lengths]),
                       np.concatenate([s.ts for s in series]),
                       np.concatenate([streamed[s.name]["x_norm"] for s in series])[:, None],
                       np.concatenate([streamed[s.name]["forecast"] for s in series])[:, None])


def _per_series(series: list[nab.Series], rows: np.ndarray) -> list[np.ndarray]:
    """A batch's rows cut back into one array per series."""
    return np.split(rows, np.cumsum([len(s.ts) for s in series])[:-1]) if series else []


def rescore(series: list[nab.Series], streamed: dict[str, dict[str, np.ndarray]],
            config: PipelineConfig, key: str = "score") -> list[np.ndarray]:
    """Final scores of every series under `config` (key "fired": 1.0 where an alert fired at the pipeline's own
    threshold, else 0.0)."""
    return _per_series(series, getattr(_batch(series, streamed, config), key))


def rescore_all(series: list[nab.Series], streamed: dict[str, dict[str, np.ndarray]],
                configs: list[PipelineConfig]) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """(final scores, alert onsets) of every series under every configuration, the configurations spread over the
    CPUs this process may use."""
    both = selection.parallel_map(_rescore_shared, configs, (series, streamed))
    return [b[0] for b in both], [b[1] for b in both]


def _rescore_shared(shared: tuple[list[nab.Series], dict[str, dict[str, np.ndarray]]],
                    config: PipelineConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Scores and alert onsets of the shared readings under one configuration."""
    out = _batch(*shared, config)
    return _per_series(shared[0], out.score), _per_series(shared[0], out.fired)


def own_threshold(fired: list[list[np.ndarray]], corpus: list[ns.FileTruth],
                  picks: list[tuple[list[int], int]]) -> float:
    """NAB score of the alerts the daemon fires at its own threshold (alert_on), each group of files under its
    configuration (fired[c][i]: configuration c, file i): what a user of the alert topic gets, no threshold swept."""
    rows: list[np.ndarray | None] = [None] * len(corpus)
    for files, config in picks:
        for i in files:
            rows[i] = fired[config][i]
    return ns.score_at(rows, corpus, 0.5, PROFILE)  # type: ignore[arg-type]


@dataclass
class Choice:
    """The configuration (index into the space) and threshold with the best swept score on some files."""

    config: int
    threshold: float
    score: float


def choose(scores: list[list[np.ndarray]], corpus: list[ns.FileTruth], files: list[int]) -> Choice:
    """Best configuration and its swept threshold on `files` only (scores[c][i]: configuration c, file i)."""
    sub = [corpus[i] for i in files]
    if not any(t.windows for t in sub):
        raise ConfigError(f"no labelled window in the files to choose on ({[t.name for t in sub]}): "
                          "fewer folds, or another --cv-seed")
    best = None
    for c, per_file in enumerate(scores):
        r = ns.sweep([per_file[i] for i in files], sub, PROFILE)
        if best is None or r.score > best.score:  # ties: the earlier configuration
            best = Choice(c, r.threshold, r.score)
    assert best is not None
    return best


def cross_validate(scores: list[list[np.ndarray]], corpus: list[ns.FileTruth],
                   folds: list[list[int]]) -> dict[str, Any]:
    """Per fold: the choice on the other folds, its training and held-out scores; cv over all held-out files."""
    detections: list[np.ndarray | None] = [None] * len(corpus)
    out = []
    for held in folds:
        train = [i for i in range(len(corpus)) if i not in set(held)]
        pick = choose(scores, corpus, train)
        for i in held:
            detections[i] = (scores[pick.config][i] >= pick.threshold).astype(np.float64)
        held_score = ns.score_at([scores[pick.config][i] for i in held], [corpus[i] for i in held],
                                 pick.threshold, PROFILE)
        out.append({"files": [corpus[i].name for i in held], "chosen": pick.config, "threshold": pick.threshold,
                    "train_score": round(pick.score, 3), "held_score": round(held_score, 3)})
    missing = [corpus[i].name for i, d in enumerate(detections) if d is None]
    if missing:
        raise ConfigError(f"the folds leave out {missing}")
    cv = ns.score_at(detections, corpus, 0.5, PROFILE)  # type: ignore[arg-type]
    return {"cv_standard": round(cv, 3), "folds": out}


def run(data_dir: Path, out_dir: Path | None, cfg: nab.NabConfig, k: int = 5, seed: int = 0,
        space: selection.Space = SEARCH_SPACE, progress: bool = False) -> dict[str, Any]:
    """Pre-train once, stream once, score every configuration, cross-validate; the summary (and OUT/nab_cv.json)."""
    started = time.perf_counter()
    corpus = ns.load_corpus(Path(data_dir))
    series = nab.load_series(corpus, Path(data_dir))
    configs = configurations(space)
    folds = selection.split_folds([t.name for t in corpus], k, seed)
    model = nab.pretrain(series, cfg, progress=progress)
    t_train = time.perf_counter() - started
    streamed = nab.stream_corpus(series, model, AnomalyPipeline(1, cfg.pipeline), cfg.chunk, progress=progress)
    scores, fired = rescore_all(series, streamed, [replace(cfg.pipeline, **c) for c in configs])
    cv = cross_validate(scores, corpus, folds)
    best = choose(scores, corpus, list(range(len(corpus))))
    base = ns.sweep([streamed[s.name]["score"] for s in series], corpus, PROFILE)
    every = [{"config": c, "standard": round(ns.sweep(sc, corpus, PROFILE).score, 3)} for c, sc in zip(
        configs, scores, strict=True)]
    cv_own = own_threshold(fired, corpus, [(held, f["chosen"]) for held, f in zip(folds, cv["folds"], strict=True)])
    in_own = own_threshold(fired, corpus, [(list(range(len(corpus))), best.config)])
    for f in cv["folds"]:
        f["chosen"] = configs[f["chosen"]]
    summary = {
        "cv_standard": cv["cv_standard"], "in_sample_standard": round(best.score, 3),
        "cv_own_threshold_standard": round(cv_own, 3), "in_sample_own_threshold_standard": round(in_own, 3),
        "in_sample": {"chosen": configs[best.config], "threshold": best.threshold},
        "base_standard": round(base.score, 3), "folds": cv["folds"], "in_sample_every": every, "k": k,
        "seed": seed,
        "search_space": [list(a) for a in space], "configurations": len(configs), "files": len(corpus),
        "base_pipeline": cfg.pipeline.to_dict(), "model": {f: getattr(cfg, f) for f in ("family", "hidden",
                                                                                       "layers", "seed", "epochs",
                                                                                       "lr")},
        "pretrain_seconds": round(t_train, 2), "seconds": round(time.perf_counter() - started, 2)}
    selection.write_summary(out_dir, "nab_cv.json", summary)
    return summary


def report(summary: dict[str, Any]) -> list[str]:
    """The printed report: cross-validated beside in-sample, and each fold's choice."""
    lines = [f"NAB {summary['k']}-fold cross-validation by file ({summary['files']} files, "
             f"{summary['configurations']} configurations, {summary['seconds']:.1f} s)",
             f"  cv_standard         {summary['cv_standard']:8.3f}  (each file scored with its fold's choice, "
             "made on the other folds)",
             f"  in_sample_standard  {summary['in_sample_standard']:8.3f}  (chosen on all files: "
             f"{selection.named(summary['in_sample']['chosen'])}, threshold {summary['in_sample']['threshold']:.4f})",
             f"  base pipeline       {summary['base_standard']:8.3f}  (in sample, swept threshold)",
             f"  own threshold       {summary['cv_own_threshold_standard']:8.3f} cross-validated, "
             f"{summary['in_sample_own_threshold_standard']:.3f} in sample  (the alerts the daemon fires at alert_on, "
             "no sweep)"]
    for j, f in enumerate(summary["folds"]):
        lines.append(f"  fold {j}: {len(f['files'])} files, train {f['train_score']:7.3f}, held "
                     f"{f['held_score']:7.3f}, threshold {f['threshold']:.4f}: {selection.named(f['chosen'])}")
    return lines
