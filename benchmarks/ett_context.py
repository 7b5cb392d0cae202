"""The ETTh1 delay line's length and ridge, chosen on the validation rows only (training/ridge.py's closed form).

For each context length L of the declared space and each ridge of examples/ett.toml's grid, NLinear's map is solved
on the training rows' windows and scored on the validation rows' windows; L is the one with the lowest validation
MSE at its best ridge. The test rows are read once, for the chosen L alone, to print what it scores there
(`streamer train examples/ett.toml` reports the same model's test MSE through its stateful forward pass).

    python -m benchmarks.ett_context --json > benchmarks/ett_context.json
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from lab.evaluation.ett import CHANNELS, TEST, TRAIN, VAL
from training import ridge as rg
from training.data import FeatureSpec, Normalizer, load_csv, split_rows

CONTEXTS = (96, 192, 336, 512, 720)  # the declared space: the lengths the forecasting papers compare
ROOT = Path(__file__).resolve().parents[1]


def run(data: Path, contexts: tuple[int, ...], ridges: tuple[float, ...], horizon: int) -> dict[str, Any]:
    """Validation MSE of every (L, ridge); the chosen L and its test MSE."""
    started = time.monotonic()
    series = load_csv(data, FeatureSpec(CHANNELS), "date")[0]
    sp = split_rows(series, {"train": TRAIN, "val": VAL, "test": TEST})
    x = Normalizer.fit([sp["train"]]).apply(series.values).astype(np.float64)
    fits = {L: rg.fit_nlinear(x, TRAIN, VAL, L, horizon, ridges) for L in contexts}
    chosen = min(contexts, key=lambda L: (fits[L].val_mse[fits[L].ridge], L))
    best = fits[chosen]
    coef = best.A[:, 1:].T
    test_mse = rg.closed_form_mse(x, rg.window_origins(*TEST, chosen, horizon), chosen, horizon, coef)
    return {"horizon": horizon, "contexts": list(contexts), "ridges": list(ridges),
            "val_mse": {str(L): {str(r): round(v, 5) for r, v in f.val_mse.items()} for L, f in fits.items()},
            "chosen": {"context": chosen, "ridge": best.ridge, "val_mse": round(best.val_mse[best.ridge], 5),
                       "test_mse_closed_form": round(test_mse, 5)},
            "rule": "lowest validation MSE over contexts x ridges; test read for the chosen pair only",
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the search and print a table, or one JSON object with --json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ett_context", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "ett" / "ETTh1.csv", help="ETTh1.csv")
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)), help="comma-separated lengths")
    parser.add_argument("--horizon", type=int, default=96, help="forecast horizon (default 96)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    ridges = tuple(float(r) for r in tomllib.loads((ROOT / "examples" / "ett.toml").read_text())["train"]["ridge"])
    out = run(args.data, tuple(int(c) for c in args.contexts.split(",")), ridges, args.horizon)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for L, row in out["val_mse"].items():
        print(f"L {L:>4}: " + "  ".join(f"ridge {r}: {v:.4f}" for r, v in row.items()))
    c = out["chosen"]
    print(f"chosen L {c['context']} ridge {c['ridge']:g}: validation {c['val_mse']:.4f}, "
          f"test (closed form) {c['test_mse_closed_form']:.4f}  ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
