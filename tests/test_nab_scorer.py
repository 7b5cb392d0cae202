"""NAB scorer: the rules of NAB's SCORING.md on hand-made cases, the vectorised sweep against brute force, NAB's own
per-file scores of its stored results on the three shipped files (data/nab), and the reference scores of NAB's stored
results (numenta, windowedGaussian) on the 35 development files (data/nab/reference)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation import nab_scorer as ns
from streamer.errors import DataError

REPO_NAB = Path(__file__).resolve().parents[1] / "data" / "nab"
# NAB's stored numenta and windowedGaussian scores on its 35 development files, with each file's row count and
# labelled windows (1.4 MB; data/nab/reference/build.py makes it from NAB's data, labels and results folders).
REFERENCE_FILE = REPO_NAB / "reference" / "nab_reference.npz"


def truth(n: int, windows: list[tuple[int, int]], name: str = "c/f.csv") -> ns.FileTruth:
    """A synthetic file of n rows with the given windows."""
    return ns.FileTruth(name, [str(i) for i in range(n)], windows)


def test_sigmoid_and_probation_match_the_spec() -> None:
    assert ns.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert ns.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert ns.scaled_sigmoid(0.0) == 0.0
    assert ns.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert ns.scaled_sigmoid(3.5) == -1.0
    assert ns.probationary_rows(1000) == 150
    assert ns.probationary_rows(22695) == 750


def raw_at(scores: np.ndarray, t: ns.FileTruth, theta: float, profile: str = "standard") -> float:
    """Raw file score at one threshold, via the sweep machinery's fixed-threshold path."""
    s = ns.score_at([scores], [t], theta, profile)
    prof = ns.PROFILES[profile]
    k = len(t.windows)
    return s / 100.0 * (prof["tp"] * k + prof["fn"] * k) - prof["fn"] * k


def test_first_detection_in_window_earns_a_tp_and_later_ones_nothing() -> None:
    t = truth(1000, [(400, 439)])  # P = 150
    s = np.zeros(1000)
    s[400] = 1.0
    assert raw_at(s, t, 0.5) == pytest.approx(1.0)
    s[401:440] = 1.0  # more detections in the same window change nothing
    assert raw_at(s, t, 0.5) == pytest.approx(1.0)
    s = np.zeros(1000)
    s[439] = 1.0  # last row of a 40-row window: sigma(-1/40) / sigma(-1)
    assert raw_at(s, t, 0.5) == pytest.approx(float(ns.scaled_sigmoid(-1 / 40) / ns.scaled_sigmoid(-1.0)))
    assert raw_at(np.zeros(1000), t, 0.5) == pytest.approx(-1.0)  # missed window: -A_FN
    assert raw_at(np.zeros(1000), t, 0.5, "reward_low_FN_rate") == pytest.approx(-2.0)


def test_false_positives_before_after_and_in_probation() -> None:
    t = truth(1000, [(400, 439)])
    s = np.zeros(1000)
    s[400] = 1.0
    s[100] = 1.0  # probationary: ignored
    s[300] = 1.0  # before the first window: -A_FP
    assert raw_at(s, t, 0.5) == pytest.approx(1.0 - 0.11)
    s[300] = 0.0
    s[440] = 1.0  # right after the window: almost free
    expect = 1.0 + 0.11 * float(ns.scaled_sigmoid(1 / 39))
    assert raw_at(s, t, 0.5) == pytest.approx(expect)
    s[440], s[900] = 0.0, 1.0  # far after: -A_FP
    assert raw_at(s, t, 0.5, "reward_low_FP_rate") == pytest.approx(1.0 - 0.22)


def test_null_and_perfect_detectors_score_0_and_100() -> None:
    corpus = [truth(1000, [(400, 439), (700, 739)], "a/x.csv"), truth(2000, [(1200, 1399)], "a/y.csv"),
              truth(500, [], "b/z.csv")]
    null = [np.full(c.n, 0.5) for c in corpus]
    perfect = []
    for c in corpus:
        s = np.zeros(c.n)
        for b, _ in c.windows:
            s[b] = 1.0
        perfect.append(s)
    for prof in ns.PROFILES:
        assert ns.sweep(null, corpus, prof).score == pytest.approx(0.0)
        assert ns.sweep(perfect, corpus, prof).score == pytest.approx(100.0)


def brute_force(scores: list[np.ndarray], corpus: list[ns.FileTruth], profile: str) -> float:
    """The spec's definition, literally: evaluate S at 1.1 and every distinct scorable score."""
    prof = ns.PROFILES[profile]
    values = np.unique(np.concatenate([s[c.probation :] for s, c in zip(scores, corpus, strict=True)]))
    best = -math.inf
    for theta in [1.1, *values[::-1].tolist()]:
        total = 0.0
        for s, c in zip(scores, corpus, strict=True):
            det = [i for i in range(c.probation, c.n) if s[i] >= theta]
            for b, e in c.windows:
                inside = [i for i in det if b <= i <= e]
                w = e - b + 1
                total += (prof["tp"] * ns.scaled_sigmoid(-(e - inside[0] + 1) / w) / ns.scaled_sigmoid(-1.0)
                          if inside else -prof["fn"])
            for i in det:
                if any(b <= i <= e for b, e in c.windows):
                    continue
                before = [(b, e) for b, e in c.windows if e < i]
                if before:
                    b, e = before[-1]
                    total += prof["fp"] * ns.scaled_sigmoid((i - e) / (e - b))
                else:
                    total -= prof["fp"]
        best = max(best, float(total))
    k_all = sum(len(c.windows) for c in corpus)
    return 100.0 * (best + prof["fn"] * k_all) / (prof["tp"] * k_all + prof["fn"] * k_all)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_sweep_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    corpus = [truth(300, [(120, 139), (200, 229)], "a/x.csv"), truth(200, [(150, 169)], "a/y.csv"),
              truth(120, [], "b/z.csv")]
    scores = [np.round(rng.random(c.n), 2) for c in corpus]  # rounding makes ties
    for prof in ns.PROFILES:
        assert ns.sweep(scores, corpus, prof).score == pytest.approx(brute_force(scores, corpus, prof), abs=1e-9)


def test_threshold_below_every_score_detects_every_row() -> None:
    corpus = [truth(300, [(120, 139)], "a/x.csv"), truth(300, [(200, 219)], "a/y.csv")]
    scores = [np.full(300, 0.9), np.full(300, 0.2)]
    # the first file has no score at or below 0.1: every row of it is detected (NAB issue #361 case)
    full = ns.score_at(scores, corpus, 0.1)
    only_first = ns.score_at([scores[0], np.zeros(300) - 1], corpus, 0.1)
    assert full != only_first and math.isfinite(full)


REFERENCE = {  # ../shared/data/README.md: NAB's stored results, exhaustive sweep, 35 development files
    "numenta": {"standard": 70.868, "reward_low_FP_rate": 65.755, "reward_low_FN_rate": 74.785},
    "windowedGaussian": {"standard": 44.931, "reward_low_FP_rate": 30.544, "reward_low_FN_rate": 51.635},
}


@pytest.mark.parametrize("detector", sorted(REFERENCE))
def test_reproduces_nab_reference_scores_of_stored_results(detector: str) -> None:
    with np.load(REFERENCE_FILE) as ref:
        files = json.loads(str(ref["files"]))
        corpus = [truth(f["rows"], [tuple(w) for w in f["windows"]], f["name"]) for f in files]
        scores = [ref[f"{detector}/{t.name}"] for t in corpus]
    assert len(corpus) == 35 and sum(len(c.windows) for c in corpus) == 69
    for prof, want in REFERENCE[detector].items():
        assert ns.sweep(scores, corpus, prof).score == pytest.approx(want, abs=0.01), (detector, prof)


# A threshold inside the range that gives NAB's detections on the three shipped files (NAB's own threshold was
# tuned on its whole corpus and is not stored with the results; these reproduce its per-row S(t) columns).
THRESHOLD = {"numenta": 0.5, "windowedGaussian": 1.0}


@pytest.mark.parametrize("detector", sorted(THRESHOLD))
def test_file_scores_equal_nab_own_scores_on_the_shipped_files(detector: str) -> None:
    corpus = ns.load_corpus(REPO_NAB, REPO_NAB / "labels" / "combined_windows.json")
    assert [c.name for c in corpus] == [f"realAWSCloudwatch/ec2_cpu_utilization_{k}.csv"
                                        for k in ("24ae8d", "5f5533", "825cc2")]
    assert [len(c.windows) for c in corpus] == [2, 2, 1]
    results = REPO_NAB / "results" / detector
    scores = ns.read_results(results, detector, corpus)
    for prof in ns.PROFILES:
        want = []
        for c in corpus:  # NAB wrote each row's contribution at its threshold: S(t)_<profile>; a file's is the sum
            cat, name = c.name.split("/")
            with open(results / cat / f"{detector}_{name}", newline="") as f:
                want.append(sum(float(r[f"S(t)_{prof}"]) for r in csv.DictReader(f)))
        got = ns.file_scores(scores, corpus, THRESHOLD[detector], prof)
        assert got == pytest.approx(want, abs=1e-9), (detector, prof)


def test_the_shipped_folder_is_a_corpus_with_its_labels():
    """data/nab holds categories and labels/ side by side (no data/ level): its windows are found."""
    corpus = ns.load_corpus(Path(__file__).resolve().parents[1] / "data" / "nab")
    assert [t.name.split("/")[0] for t in corpus] == ["realAWSCloudwatch"] * 3
    assert all(t.windows for t in corpus)


def test_a_folder_without_labels_is_one_clear_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "f.csv").write_text("timestamp,value\\n2015-01-01 00:00:00,1\\n")
    with pytest.raises(DataError, match="no NAB labels"):
        ns.load_corpus(tmp_path)
