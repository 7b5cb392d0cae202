"""`streamer eval smap --cv K`: the threshold settings chosen honestly, by K-fold cross-validation over channels.

The channels are split into K folds stratified by subsystem (the letter before the dash, e.g. A, P, E). For each
fold, the configuration of the declared search space (`SEARCH_SPACE`: Telemanom's pruning, the inverted
errors, the smoothing span) with the best event-level F1 on the other K-1 folds' channels is applied to
the held fold's channels. `cv_precision` and `cv_recall` count every channel with its own fold's choice;
`in_sample_precision` and `in_sample_recall` are the same search made (and scored) on all channels, and
`precision` and `recall` are those of the configuration given (SmapConfig's defaults).

The forecaster of each channel is fitted once on its train array (no labels); its test errors depend only on it,
so each channel is streamed through the engine once and only the thresholding is run again per configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lab.evaluation import selection, smap
from streamer.errors import ConfigError

# The declared search space: axes of SmapConfig overrides; the configurations are their product (20 here).
SEARCH_SPACE: selection.Space = (
    ({"prune": 0.05}, {"prune": 0.08}, {"prune": 0.10}, {"prune": 0.13}, {"prune": 0.20}),
    ({"invert": True}, {"invert": False}),
    ({"span": 105.0}, {"span": 140.0}),
)
# what each channel's forecaster is fitted and streamed with: fitted once, never searched
FIXED = ("family", "hidden", "seed", "epochs", "segments", "washout", "lr", "horizon", "chunk", "skip")
Counts = dict[str, int]


def configurations(space: selection.Space = SEARCH_SPACE) -> list[dict[str, Any]]:
    """Every configuration of a search space over SmapConfig's threshold settings."""
    return selection.configurations(space, set(smap.SmapConfig().to_dict()), FIXED)


@dataclass
class Choice:
    """The configuration (index into the space) with the best F1 on some channels."""

    config: int
    f1: float


def choose(counts: list[list[Counts]], channels: list[int]) -> Choice:
    """Best configuration by event-level F1 on `channels` only (counts[c][i]: configuration c, channel i)."""
    if not channels:
        raise ConfigError("no channels to choose on")
    best = None
    for c, per_channel in enumerate(counts):
        f1 = smap.rates([per_channel[i] for i in channels])[2]
        if best is None or f1 > best.f1:  # ties: the earlier configuration
            best = Choice(c, f1)
    assert best is not None
    return best


def cross_validate(counts: list[list[Counts]], names: list[str], folds: list[list[int]]) -> dict[str, Any]:
    """Per fold: the choice on the other folds and its held-out counts; precision and recall over all held out."""
    held_counts: list[Counts | None] = [None] * len(names)
    out = []
    for held in folds:
        train = [i for i in range(len(names)) if i not in set(held)]
        pick = choose(counts, train)
        for i in held:
            held_counts[i] = counts[pick.config][i]
        p, r, f1 = smap.rates([counts[pick.config][i] for i in held])
        out.append({"channels": [names[i] for i in held], "chosen": pick.config, "train_f1": round(pick.f1, 4),
                    "held_precision": round(p, 4), "held_recall": round(r, 4), "held_f1": round(f1, 4)})
    missing = [names[i] for i, c in enumerate(held_counts) if c is None]
    if missing:
        raise ConfigError(f"the folds leave out {missing}")
    p, r, f1 = smap.rates(held_counts)  # type: ignore[arg-type]
    return {"cv_precision": round(p, 4), "cv_recall": round(r, 4), "cv_f1": round(f1, 4), "folds": out}


def _stratum(name: str) -> str:
    """'A/A-1' for channel 'A-1': folds are stratified by subsystem."""
    return f"{name.split('-', 1)[0]}/{name}"


def _streamed(chans: list[smap.Channel], cfg: smap.SmapConfig, progress: bool) -> dict[str, np.ndarray]:
    """Each channel's test errors, from its forecaster fitted on its train array."""
    from tqdm import tqdm

    return {ch.name: smap.channel_errors(ch, smap.fit_channel(ch, cfg), cfg)[1]
            for ch in tqdm(chans, desc="smap fit+stream", unit="channel", disable=not progress)}


def _counts(shared: tuple[list[smap.Channel], dict[str, np.ndarray]], cfg: smap.SmapConfig) -> list[Counts]:
    """Event-level counts of every channel's stored errors thresholded under one configuration."""
    chans, errors = shared
    return [smap.score_channel(smap.detect(ch, errors[ch.name], cfg)["sequences"], ch.labels) for ch in chans]


def run(data: Path, out_dir: Path | None, cfg: smap.SmapConfig, k: int = 5, seed: int = 0,
        space: selection.Space = SEARCH_SPACE, only: list[str] | None = None, max_rows: int | None = None,
        progress: bool = False) -> dict[str, Any]:
    """Fit and stream once, threshold under every configuration, cross-validate; the summary (OUT/smap_cv.json)."""
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smap-") as tmp:
        root, labels = smap.resolve_data(Path(data), Path(tmp))
        chans = smap.load_channels(root, labels, only, max_rows=max_rows)
    names = [ch.name for ch in chans]
    configs = configurations(space)
    folds = selection.split_folds([_stratum(n) for n in names], k, seed)
    errors = _streamed(chans, cfg, progress)
    t_fit = time.perf_counter() - started
    counts = selection.parallel_map(_counts, [replace(cfg, **c) for c in configs], (chans, errors))
    base = _counts((chans, errors), cfg)
    cv = cross_validate(counts, names, folds)
    best = choose(counts, list(range(len(chans))))
    for f in cv["folds"]:
        f["chosen"] = configs[f["chosen"]]
    (p, r, f1), (bp, br, bf1) = smap.rates(counts[best.config]), smap.rates(base)
    summary = {
        "cv_precision": cv["cv_precision"], "cv_recall": cv["cv_recall"], "cv_f1": cv["cv_f1"],
        "in_sample_precision": round(p, 4), "in_sample_recall": round(r, 4), "in_sample_f1": round(f1, 4),
        "in_sample": {"chosen": configs[best.config]},
        "precision": round(bp, 4), "recall": round(br, 4), "f1": round(bf1, 4),
        "folds": cv["folds"], "k": k, "seed": seed, "channels": len(chans),
        "labelled_sequences": sum(len(ch.labels) for ch in chans),
        "in_sample_every": [{"config": c, **dict(zip(("precision", "recall", "f1"),
                                                    (round(v, 4) for v in smap.rates(per)), strict=True))}
                            for c, per in zip(configs, counts, strict=True)],
        "search_space": [list(a) for a in space], "configurations": len(configs), "base_config": cfg.to_dict(),
        "scoring": "event level, Telemanom: a labelled sequence overlapped by a predicted one is a TP; "
                   "no point adjustment; the choice maximises F1",
        "fit_and_stream_seconds": round(t_fit, 1), "seconds": round(time.perf_counter() - started, 1)}
    selection.write_summary(out_dir, "smap_cv.json", summary)
    return summary


def report(summary: dict[str, Any]) -> list[str]:
    """The printed report: cross-validated beside in-sample and the given configuration, and each fold's choice."""
    lines = [f"SMAP {summary['k']}-fold cross-validation by channel ({summary['channels']} channels, "
             f"{summary['labelled_sequences']} labelled sequences, {summary['configurations']} configurations, "
             f"{summary['seconds']:.1f} s; event level, no point adjustment)",
             f"  cross-validated  precision {summary['cv_precision']:.3f}  recall {summary['cv_recall']:.3f}  "
             f"F1 {summary['cv_f1']:.3f}  (each channel with its fold's choice, made on the other folds)",
             f"  in sample        precision {summary['in_sample_precision']:.3f}  recall "
             f"{summary['in_sample_recall']:.3f}  F1 {summary['in_sample_f1']:.3f}  (chosen on all channels: "
             f"{selection.named(summary['in_sample']['chosen'])})",
             f"  given config     precision {summary['precision']:.3f}  recall {summary['recall']:.3f}  "
             f"F1 {summary['f1']:.3f}"]
    for j, f in enumerate(summary["folds"]):
        lines.append(f"  fold {j}: {len(f['channels'])} channels, train F1 {f['train_f1']:.3f}, held P "
                     f"{f['held_precision']:.3f} R {f['held_recall']:.3f}: {selection.named(f['chosen'])}")
    return lines
