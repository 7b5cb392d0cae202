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

import itertools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from streamer.detectors import AnomalyPipeline, PipelineConfig
from streamer.errors import ConfigError
from streamer.evaluation import nab
from streamer.evaluation import nab_scorer as ns

DAY_MS = 86_400_000
# The declared search space: axes of PipelineConfig overrides; the configurations are their product (24 here).
SEARCH_SPACE: tuple[tuple[dict[str, Any], ...], ...] = (
    ({"season_ms": 0}, {"season_ms": DAY_MS, "season_max": 300}, {"season_ms": DAY_MS, "season_max": 1500}),
    ({"value_short": 0}, {"value_short": 4}),
    ({"long_halflife": 2000.0}, {"long_halflife": 8000.0}),
    ({"short": 4}, {"short": 8}),
)
FIXED = ("norm_halflife",)  # the pre-training normalises with it: never searched
PROFILE = "standard"


def configurations(space: tuple[tuple[dict[str, Any], ...], ...] = SEARCH_SPACE) -> list[dict[str, Any]]:
    """Every configuration of a search space: the merged overrides of one choice per axis, in a fixed order."""
    known = set(PipelineConfig().to_dict())
    out = []
    for combo in itertools.product(*space):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        bad = sorted(set(merged) - known) + sorted(set(merged) & set(FIXED))
        if bad:
            raise ConfigError(f"search space: fields {bad} are unknown or fixed (known: {sorted(known)})")
        out.append(merged)
    return out


def load_space(path: Path) -> tuple[tuple[dict[str, Any], ...], ...]:
    """A search space from JSON: a list of axes, each a list of objects of PipelineConfig field overrides."""
    axes = json.loads(Path(path).read_text())
    if not isinstance(axes, list) or not all(isinstance(a, list) and a for a in axes):
        raise ConfigError(f"{path}: a search space is a list of non-empty lists of field overrides")
    return tuple(tuple(dict(c) for c in a) for a in axes)


def split_folds(names: list[str], k: int, seed: int = 0) -> list[list[int]]:
    """K disjoint folds of file indices covering every file, stratified by category (the part before '/').

    Each category's files are shuffled with `seed`, the categories laid end to end (sorted by name) and the
    files dealt to folds in turn, so every category is spread as evenly as its size allows and folds differ in
    size by at most one file.
    """
    if not 2 <= k <= len(names):
        raise ConfigError(f"--cv {k}: needs 2 <= K <= the number of files ({len(names)})")
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_cat.setdefault(name.split("/", 1)[0], []).append(i)
    order = [i for cat in sorted(by_cat) for i in rng.permutation(by_cat[cat]).tolist()]
    folds: list[list[int]] = [[] for _ in range(k)]
    for j, i in enumerate(order):
        folds[j % k].append(i)
    return [sorted(f) for f in folds]


def rescore(series: list[nab.Series], streamed: dict[str, dict[str, np.ndarray]],
            config: PipelineConfig) -> list[np.ndarray]:
    """Final scores of every series under `config`, from the normalised readings and forecasts of one stream."""
    pipe = AnomalyPipeline(1, config)
    out = []
    for s in series:
        r = streamed[s.name]
        out.append(pipe.score(pipe.init_state(), s.ts, r["x_norm"][:, None], r["forecast"][:, None])["score"])
    return out


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


def _named(config: dict[str, Any]) -> str:
    """One configuration's overrides as 'field=value ...'."""
    return " ".join(f"{k}={v}" for k, v in config.items())


def run(data_dir: Path, out_dir: Path | None, cfg: nab.NabConfig, k: int = 5, seed: int = 0,
        space: tuple[tuple[dict[str, Any], ...], ...] = SEARCH_SPACE, progress: bool = False) -> dict[str, Any]:
    """Pre-train once, stream once, score every configuration, cross-validate; the summary (and OUT/nab_cv.json)."""
    started = time.perf_counter()
    corpus = ns.load_corpus(Path(data_dir))
    series = nab.load_series(corpus, Path(data_dir))
    configs = configurations(space)
    folds = split_folds([t.name for t in corpus], k, seed)
    model = nab.pretrain(series, cfg, progress=progress)
    t_train = time.perf_counter() - started
    streamed = nab.stream_corpus(series, model, AnomalyPipeline(1, cfg.pipeline), cfg.chunk, progress=progress)
    scores = [rescore(series, streamed, replace(cfg.pipeline, **c)) for c in configs]
    cv = cross_validate(scores, corpus, folds)
    best = choose(scores, corpus, list(range(len(corpus))))
    base = ns.sweep([streamed[s.name]["score"] for s in series], corpus, PROFILE)
    every = [{"config": c, "standard": round(ns.sweep(sc, corpus, PROFILE).score, 3)} for c, sc in zip(
        configs, scores, strict=True)]
    for f in cv["folds"]:
        f["chosen"] = configs[f["chosen"]]
    summary = {
        "cv_standard": cv["cv_standard"], "in_sample_standard": round(best.score, 3),
        "in_sample": {"chosen": configs[best.config], "threshold": best.threshold},
        "base_standard": round(base.score, 3), "folds": cv["folds"], "in_sample_every": every, "k": k,
        "seed": seed,
        "search_space": [list(a) for a in space], "configurations": len(configs), "files": len(corpus),
        "base_pipeline": cfg.pipeline.to_dict(), "model": {f: getattr(cfg, f) for f in ("family", "hidden",
                                                                                       "layers", "seed", "epochs",
                                                                                       "lr")},
        "pretrain_seconds": round(t_train, 2), "seconds": round(time.perf_counter() - started, 2)}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "nab_cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def report(summary: dict[str, Any]) -> list[str]:
    """The printed report: cross-validated beside in-sample, and each fold's choice."""
    lines = [f"NAB {summary['k']}-fold cross-validation by file ({summary['files']} files, "
             f"{summary['configurations']} configurations, {summary['seconds']:.1f} s)",
             f"  cv_standard         {summary['cv_standard']:8.3f}  (each file scored with its fold's choice, "
             "made on the other folds)",
             f"  in_sample_standard  {summary['in_sample_standard']:8.3f}  (chosen on all files: "
             f"{_named(summary['in_sample']['chosen'])}, threshold {summary['in_sample']['threshold']:.4f})",
             f"  base pipeline       {summary['base_standard']:8.3f}  (in sample, swept threshold)"]
    for j, f in enumerate(summary["folds"]):
        lines.append(f"  fold {j}: {len(f['files'])} files, train {f['train_score']:7.3f}, held "
                     f"{f['held_score']:7.3f}, threshold {f['threshold']:.4f}: {_named(f['chosen'])}")
    return lines
