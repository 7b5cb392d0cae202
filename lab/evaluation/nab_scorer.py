"""NAB scoring (v1.1 rules, ../shared/data/nab/SCORING.md): windows, scaled sigmoid, profiles, exhaustive sweep."""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.errors import DataError

PROFILES: dict[str, dict[str, float]] = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}
_TS_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's sigma(y) = 2 / (1 + e^(5y)) - 1, and -1 where y > 3."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(y > 3.0, -1.0, np.tanh(-2.5 * np.minimum(y, 3.0)))


def probationary_rows(n: int) -> int:
    """P = min(floor(0.15 N), 750): rows below P are never scored."""
    return int(min(math.floor(0.15 * n), 0.15 * 5000))


def _norm_ts(s: str) -> str:
    """Timestamp text to 'YYYY-MM-DD HH:MM:SS' (fractions of zero dropped) for matching labels to rows."""
    s = s.strip()
    if "." in s:
        head, frac = s.split(".", 1)
        if frac.strip("0") == "":
            return head
    return s


@dataclass
class FileTruth:
    """One data file of a NAB corpus: its row timestamps and anomaly windows as inclusive row ranges."""

    name: str  # "<category>/<file>.csv"
    timestamps: list[str]
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of rows."""
        return len(self.timestamps)

    @property
    def probation(self) -> int:
        """Probationary rows P."""
        return probationary_rows(self.n)


def read_series(path: Path) -> tuple[list[str], np.ndarray]:
    """A NAB data file: (timestamps as text, values float64)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], [r for r in rows[1:] if r]
    it, iv = head.index("timestamp"), head.index("value")
    return [r[it] for r in body], np.array([float(r[iv]) for r in body], dtype=np.float64)


def load_corpus(data_dir: Path, labels: Path | None = None) -> list[FileTruth]:
    """Files `data/<category>/*.csv` under data_dir (or data_dir itself) with windows from combined_windows.json."""
    data_dir = Path(data_dir)
    root = data_dir / "data" if (data_dir / "data").is_dir() else data_dir
    paths = sorted(root.glob("*/*.csv"))
    if not paths:
        raise DataError(f"no NAB data files <category>/*.csv under {root}")
    if labels is None:  # NAB's layout (data/ beside labels/), or a folder of categories with labels/ inside it
        found = [p / "labels" / "combined_windows.json" for p in (root.parent, data_dir)]
        labels = next((p for p in found if p.exists()), None)
        if labels is None:
            raise DataError(f"no NAB labels: neither {found[0]} nor {found[1]} exists")
    windows = json.loads(Path(labels).read_text())
    corpus = []
    for path in paths:
        name = f"{path.parent.name}/{path.name}"
        ts, _ = read_series(path)
        index = {_norm_ts(t): i for i, t in enumerate(ts)}
        rng = []
        for a, b in windows.get(name, []):
            try:
                rng.append((index[_norm_ts(a)], index[_norm_ts(b)]))
            except KeyError as e:
                raise ValueError(f"{name}: window boundary {e.args[0]} is not a timestamp of the file") from None
        corpus.append(FileTruth(name, ts, sorted(rng)))
    return corpus


def row_weights(truth: FileTruth, profile: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per scorable row: window index (-1 outside), TP weight (in windows), FP weight (outside); and #windows.

    Returned arrays cover rows P..N-1; windows with no scorable row are dropped (no FN for them).
    """
    n, p = truth.n, truth.probation
    win = np.full(n, -1, dtype=np.int64)
    tp = np.zeros(n)
    fp = np.full(n, -profile["fp"])
    ends = []
    for k, (b, e) in enumerate(truth.windows):
        width = e - b + 1
        idx = np.arange(b, e + 1)
        win[idx] = k
        tp[idx] = profile["tp"] * scaled_sigmoid(-(e - idx + 1) / width) / scaled_sigmoid(-1.0)
        ends.append((e, width))
    # FP weights after a window: relative to the most recent window that ended before the row
    for j, (e, width) in enumerate(ends):
        nxt = truth.windows[j + 1][0] if j + 1 < len(ends) else n
        idx = np.arange(e + 1, nxt)
        if width > 1:  # a window of width 1 would divide by zero: treated as far away (-A_FP)
            fp[idx] = profile["fp"] * scaled_sigmoid((idx - e) / (width - 1))
    # re-number kept windows so that indices are contiguous among scorable ones
    sl = slice(p, n)
    w = win[sl]
    ids = np.unique(w[w >= 0])
    remap = np.full(len(truth.windows) + 1, -1, dtype=np.int64)
    remap[ids] = np.arange(ids.size)
    w = np.where(w >= 0, remap[w], -1)
    return w, tp[sl], fp[sl], int(ids.size)


@dataclass
class SweepResult:
    """Best raw score S(theta*), its threshold, the normalised NAB score and the normalisers."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float


def _curve(scores: list[np.ndarray], corpus: list[FileTruth], prof: dict[str, float]):
    """Thresholds (descending) and raw corpus score at each, plus the nothing-detected base and windows count."""
    parts_s, parts_w, parts_tp, parts_fp = [], [], [], []
    offset, n_windows, n_all = 0, 0, 0
    for truth, s in zip(corpus, scores, strict=True):
        w, tp, fp, k = row_weights(truth, prof)
        parts_s.append(np.asarray(s, dtype=np.float64)[truth.probation :])
        parts_w.append(np.where(w >= 0, w + offset, -1))
        parts_tp.append(tp)
        parts_fp.append(fp)
        offset += k
        n_windows += k
        n_all += len(truth.windows)
    s = np.concatenate(parts_s)
    w = np.concatenate(parts_w)
    tp = np.concatenate(parts_tp)
    fp = np.concatenate(parts_fp)
    order = np.argsort(-s, kind="stable")
    s, w, tp, fp = s[order], w[order], tp[order], fp[order]
    delta = np.where(w < 0, fp, 0.0)
    inw = np.flatnonzero(w >= 0)
    if inw.size:
        g = w[inw]
        o = np.lexsort((inw, g))  # by window, then by detection order
        pos, gid, val = inw[o], g[o], tp[inw][o]
        big = 10.0 * (prof["tp"] + 1.0)
        run = np.maximum.accumulate(val + gid * big) - gid * big  # running max of TP weight within a window
        first = np.r_[True, gid[1:] != gid[:-1]]
        prev = np.where(first, -prof["fn"], np.r_[0.0, run[:-1]])
        delta[pos] = run - prev
    base = -prof["fn"] * n_windows
    raw = base + np.cumsum(delta)
    last = np.r_[s[1:] != s[:-1], True]  # evaluate after every row of equal score has entered
    return s[last], raw[last], base, n_windows, n_all


def sweep(scores: list[np.ndarray], corpus: list[FileTruth], profile: str = "standard") -> SweepResult:
    """Exhaustive threshold sweep: the single threshold maximising the raw corpus score (ties: highest)."""
    prof = PROFILES[profile]
    thr, raw, base, n_windows, n_all = _curve(scores, corpus, prof)
    cand_t = np.r_[1.1, thr]
    cand_r = np.r_[base, raw]
    best = int(np.argmax(cand_r))
    null = -prof["fn"] * n_windows
    perfect = prof["tp"] * n_all
    value = float(cand_r[best])
    return SweepResult(profile, float(cand_t[best]), value, null, perfect, 100.0 * (value - null) / (perfect - null))


def score_at(scores: list[np.ndarray], corpus: list[FileTruth], threshold: float, profile: str = "standard") -> float:
    """Normalised NAB score of detections `score >= threshold` (a fixed, not swept, threshold)."""
    prof = PROFILES[profile]
    thr, raw, base, n_windows, n_all = _curve(scores, corpus, prof)
    hit = np.flatnonzero(thr >= threshold)
    value = float(raw[hit[-1]]) if hit.size else base
    null = -prof["fn"] * n_windows
    return 100.0 * (value - null) / (prof["tp"] * n_all - null)


def file_scores(scores: list[np.ndarray], corpus: list[FileTruth], threshold: float,
                profile: str = "standard") -> list[float]:
    """Raw score S_f(theta) of every file at one threshold (for picking best and worst series)."""
    prof = PROFILES[profile]
    out = []
    for truth, s in zip(corpus, scores, strict=True):
        w, tp, fp, k = row_weights(truth, prof)
        det = np.asarray(s, dtype=np.float64)[truth.probation :] >= threshold
        total = float(fp[det & (w < 0)].sum())
        for j in range(k):
            hit = det & (w == j)
            total += float(tp[hit].max()) if hit.any() else -prof["fn"]
        out.append(total)
    return out


def read_results(results_dir: Path, detector: str, corpus: list[FileTruth]) -> list[np.ndarray]:
    """Anomaly scores of `<results_dir>/<category>/<detector>_<name>.csv` for every corpus file, by row position."""
    out = []
    for truth in corpus:
        cat, name = truth.name.split("/", 1)
        path = Path(results_dir) / cat / f"{detector}_{name}"
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        head, body = rows[0], rows[1:]
        if len(body) != truth.n:
            raise ValueError(f"{path}: {len(body)} rows but the data file has {truth.n}")
        it, ia = head.index("timestamp"), head.index("anomaly_score")
        if any(_norm_ts(r[it]) != _norm_ts(t) for r, t in zip(body, truth.timestamps, strict=True)):
            warnings.warn(f"{path}: timestamps differ from the data file (paired by row position)", stacklevel=2)
        out.append(np.array([float(r[ia]) for r in body], dtype=np.float64))
    return out


def score_results(results_dir: Path, detector: str, corpus: list[FileTruth]) -> dict[str, SweepResult]:
    """All three profiles of a detector's stored result files."""
    scores = read_results(results_dir, detector, corpus)
    return {p: sweep(scores, corpus, p) for p in PROFILES}
