"""Rebuild nab_reference.npz: NAB's stored numenta and windowedGaussian anomaly scores on its 35 development files.

The scorer's reference check (tests/test_nab_scorer.py) needs only each file's row count, its labelled windows as
row ranges and the two detectors' per-row scores, not the 30 MB of data and result files they come from.
Run from the repository root with NAB's development folder (data/, labels/, results/):
    python data/nab/reference/build.py ../shared/data/nab
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lab.evaluation import nab_scorer as ns

DETECTORS = ("numenta", "windowedGaussian")


def build(nab: Path, out: Path) -> None:
    """Write the compact reference of the corpus under `nab` to `out`."""
    corpus = ns.load_corpus(nab)
    arrays = {f"{d}/{t.name}": s for d in DETECTORS
              for t, s in zip(corpus, ns.read_results(nab / "results" / d, d, corpus), strict=True)}
    files = [{"name": t.name, "rows": t.n, "windows": t.windows} for t in corpus]
    np.savez_compressed(out, files=np.array(json.dumps(files)), **arrays)


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(__file__).with_name("nab_reference.npz"))
