"""The built-in checkpoint `streamer serve` runs when no STREAMER_MODEL__CHECKPOINT is set.

A GRU forecaster (one numeric channel, horizon 1) fitted on the probationary rows of the three NAB series in
data/nab/realAWSCloudwatch/ only: the first 15% of each file, which NAB itself leaves unscored and which hold
none of the labelled anomaly windows, so the demo's alerts on those series are not on readings the model saw.
`streamer train` fits one stream per file; this fits the three streams together with the same fit() and writes
the same checkpoint format, with the product anomaly pipeline (`detectors`) and the training normalisation.

    python -m training.builtin            # or: make builtin-model
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from streamer import checkpoints
from streamer.config import DetectorsSettings
from streamer.detection import pipeline_config
from streamer.models import ModelConfig, build_model
from training.data import FeatureSpec, Normalizer, Series, Split, fingerprint, load_csv
from training.fit import TrainConfig, fit
from training.layout import Stream

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "nab" / "realAWSCloudwatch"
OUT = ROOT / "streamer" / "builtin" / "nab-aws-gru"
PROBATION = 0.15  # NAB's probationary share of each file (its scorer ignores detections there)
VAL_SHARE = 0.2  # the last fifth of each probationary part: validation rows for early stopping
SPEC = FeatureSpec(("value",))
TRAIN = TrainConfig(task="forecast", epochs=40, batch=8, tbptt=32, washout=8, lr=0.005, patience=6,
                    seed=0, progress=False)
HIDDEN = 16


def probationary_splits(files: list[Path]) -> tuple[list[Split], list[Split]]:
    """Training and validation rows of each file: both inside its probationary first 15%, nothing after."""
    train, val = [], []
    for path in files:
        series: Series = load_csv(path, SPEC, "timestamp")[0]
        end = int(len(series) * PROBATION)
        cut = int(end * (1.0 - VAL_SHARE))
        train.append(Split(series, 0, cut))
        val.append(Split(series, cut, end))
    return train, val


def streams(splits: list[Split], norm: Normalizer) -> list[Stream]:
    """Normalised streams holding only rows up to each split's end (later rows never reach the fit)."""
    return [Stream(s.series.stream, norm.apply(s.series.values[: s.hi]), lo=s.lo, hi=s.hi) for s in splits]


def build(out: Path = OUT, data: Path = DATA) -> dict[str, Any]:
    """Fit the built-in model on the probationary rows of data/nab/realAWSCloudwatch/*.csv; write it to `out`."""
    t0 = time.monotonic()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    files = sorted(data.glob("*.csv"))
    train, val = probationary_splits(files)
    norm = Normalizer.fit(train)
    torch.manual_seed(TRAIN.seed)
    model = build_model(ModelConfig(family="gru", n_features=1, hidden=HIDDEN, heads=("forecast",), horizon=1))
    hist = fit(model, TRAIN, streams(train, norm), streams(val, norm))
    model = model.cpu().eval()
    rel = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in files]
    meta = {
        "name": "builtin-nab-aws-gru",
        "features": SPEC.to_dict(),
        "normalization": norm.to_dict(),
        "horizon": 1,
        "thresholds": None,
        "detectors": pipeline_config(DetectorsSettings()).to_dict(),
        "training": {"config": asdict(TRAIN), "history": hist.to_dict(), "source_config": "training/builtin.py",
                     "data": {"files": rel, "rows": {p: {"train": [t.lo, t.hi], "val": [v.lo, v.hi]}
                                                     for p, t, v in zip(rel, train, val, strict=True)},
                              "note": "NAB's probationary rows only (the first 15% of each file): no labelled "
                                      "anomaly window lies in them"}},
        "data_fingerprint": fingerprint(train),
        "metrics": {"best_epoch": hist.best_epoch + 1, "epochs_run": len(hist.train_loss),
                    "val_mse": hist.val_loss[hist.best_epoch], "seconds": time.monotonic() - t0},
    }
    checkpoints.save(out, model, meta)
    return meta["metrics"]


def main(argv: list[str] | None = None) -> int:
    """Rebuild the built-in checkpoint (the default folder is the one the package ships)."""
    p = argparse.ArgumentParser(prog="python -m training.builtin", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"checkpoint folder (default {OUT.relative_to(ROOT)})")
    print(build(p.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
