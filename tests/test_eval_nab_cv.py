"""`streamer eval nab --cv K`: the stratified fold split, selection blind to the held fold's labels, rescoring
equal to streaming, and a small end-to-end run on the shipped NAB files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation import nab, nab_cv, selection
from lab.evaluation import nab_scorer as ns
from streamer.errors import ConfigError
from tests.helpers import parse_cli
from tests.test_eval_nab import small_nab

SHIPPED_NAB = Path(__file__).resolve().parents[1] / "data" / "nab"


def shipped_nab(root: Path) -> Path:
    """NAB's layout (data/<category>/*.csv, labels/combined_windows.json) of the 3 shipped files, in full."""
    files = sorted((SHIPPED_NAB / "realAWSCloudwatch").glob("*.csv"))
    assert len(files) == 3, f"the shipped NAB series are missing from {SHIPPED_NAB}"
    labels = json.loads((SHIPPED_NAB / "labels" / "combined_windows.json").read_text())
    (root / "data" / "realAWSCloudwatch").mkdir(parents=True)
    (root / "labels").mkdir()
    for f in files:
        (root / "data" / "realAWSCloudwatch" / f.name).write_bytes(f.read_bytes())
    names = [f"realAWSCloudwatch/{f.name}" for f in files]
    (root / "labels" / "combined_windows.json").write_text(json.dumps({n: labels[n] for n in names}))
    return root


def synthetic_names() -> list[str]:
    """13 files in 3 categories of 7, 4 and 2 files."""
    return ([f"catA/a{i}.csv" for i in range(7)] + [f"catB/b{i}.csv" for i in range(4)]
            + [f"catC/c{i}.csv" for i in range(2)])


def test_fold_split_is_stratified_deterministic_disjoint_and_covering() -> None:
    names = synthetic_names()
    folds = selection.split_folds(names, 3, seed=7)
    assert len(folds) == 3
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(len(names)))  # disjoint and covering
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for cat, n in (("catA", 7), ("catB", 4), ("catC", 2)):
        per_fold = [sum(names[i].startswith(cat) for i in f) for f in folds]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1, (cat, per_fold)
    assert selection.split_folds(names, 3, seed=7) == folds
    assert any(selection.split_folds(names, 3, seed=s) != folds for s in range(8))  # the seed matters
    for k in (1, len(names) + 1):
        with pytest.raises(ConfigError):
            selection.split_folds(names, k)


def test_search_space_is_the_product_of_its_axes_and_never_varies_the_normalisation() -> None:
    configs = nab_cv.configurations()
    assert len(configs) == 60 and len({json.dumps(c, sort_keys=True) for c in configs}) == 60
    assert all("norm_halflife" not in c for c in configs)
    with pytest.raises(ConfigError):
        nab_cv.configurations((({"norm_halflife": 100.0},),))
    with pytest.raises(ConfigError):
        nab_cv.configurations((({"no_such_field": 1},),))


def corpus_with_window(start: int, n: int = 1000) -> list[ns.FileTruth]:
    """Four files of n rows, each with one window of 21 rows from `start`."""
    stamps = [str(i) for i in range(n)]
    return [ns.FileTruth(f"cat/f{i}.csv", stamps, [(start, start + 20)]) for i in range(4)]


def spike(at: int, n: int = 1000) -> np.ndarray:
    """Scores of n rows: 1 at row `at`, 0 elsewhere."""
    s = np.zeros(n)
    s[at] = 1.0
    return s


def test_selection_for_a_fold_never_sees_the_held_folds_labels() -> None:
    # configuration 0 flags row 505 of every file, configuration 1 row 800
    scores = [[spike(505) for _ in range(4)], [spike(800) for _ in range(4)]]
    folds = [[0, 1, 2], [3]]
    truth = corpus_with_window(500)
    moved = [replace(t, windows=[(790, 810)]) for t in truth[:3]] + [truth[3]]
    # the held files' labels would change the choice made on all files ...
    everything = list(range(4))
    assert nab_cv.choose(scores, truth, everything).config == 0
    assert nab_cv.choose(scores, moved, everything).config == 1
    # ... but fold 0's choice is made on file 3 alone, and is the same under either labelling
    a, b = nab_cv.cross_validate(scores, truth, folds), nab_cv.cross_validate(scores, moved, folds)
    for key in ("chosen", "threshold", "train_score"):
        assert a["folds"][0][key] == b["folds"][0][key]
    assert a["folds"][0]["chosen"] == 0
    assert a["folds"][0]["held_score"] > b["folds"][0]["held_score"]  # scored on the held labels


def test_cv_score_is_one_nab_score_over_the_held_out_detections() -> None:
    truth = corpus_with_window(500)
    truth[3] = replace(truth[3], windows=[(790, 810)])
    scores = [[spike(505) for _ in range(4)], [spike(800) for _ in range(4)]]
    folds = [[0, 1], [2, 3]]
    cv = nab_cv.cross_validate(scores, truth, folds)
    held: list[np.ndarray] = [np.zeros(0)] * 4
    for files, fold in zip(folds, cv["folds"], strict=True):
        assert fold["files"] == [truth[i].name for i in files]
        for i in files:
            held[i] = (scores[fold["chosen"]][i] >= fold["threshold"]).astype(float)
    # fold 1 trains on files 0 and 1 (windows at 500) and picks configuration 0, which misses file 3's window
    assert [f["chosen"] for f in cv["folds"]] == [0, 0]
    assert cv["cv_standard"] == pytest.approx(ns.score_at(held, truth, 0.5, "standard"), abs=1e-3)
    assert cv["cv_standard"] < 100.0


def test_rescoring_the_streamed_forecasts_equals_streaming_with_that_pipeline(tmp_path: Path,
                                                                              one_torch_thread: None) -> None:
    data = small_nab(tmp_path / "nab", rows=900)
    corpus = ns.load_corpus(data)
    series = nab.load_series(corpus, data)
    cfg = nab.NabConfig(epochs=2, chunk=128)
    model = nab.pretrain(series, cfg)
    streamed = nab.stream_corpus(series, model, nab.AnomalyPipeline(1, cfg.pipeline), cfg.chunk)
    other = replace(cfg.pipeline, season_ms=nab_cv.DAY_MS, season_max=300, value_short=4, short=4,
                    long_halflife=2000.0)
    direct = nab.stream_corpus(series, model, nab.AnomalyPipeline(1, other), 97)
    for pipe, want in ((cfg.pipeline, streamed), (other, direct)):
        got = nab_cv.rescore(series, streamed, pipe)
        for s, g in zip(series, got, strict=True):
            np.testing.assert_allclose(g, want[s.name]["score"], rtol=1e-6, atol=1e-9)


def test_eval_nab_cv_end_to_end_on_the_shipped_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     one_torch_thread: None) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps([[{"value_short": 0}, {"value_short": 4}]]))
    out = tmp_path / "out"
    data = shipped_nab(tmp_path / "nab")
    assert all(t.windows for t in ns.load_corpus(data))  # every file labelled
    args = parse_cli(["eval", "nab", "--data", str(data), "--out", str(out), "--cv", "3", "--space",
                  str(space), "--epochs", "3", "--quiet", "--json"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert any(line.strip().startswith("cv_standard") for line in printed)
    assert isinstance(summary["cv_standard"], float) and isinstance(summary["in_sample_standard"], float)
    # the alerts at the daemon's own threshold, scored without a sweep, cross-validated and in sample
    assert isinstance(summary["cv_own_threshold_standard"], float)
    assert isinstance(summary["in_sample_own_threshold_standard"], float)
    assert summary["configurations"] == 2 and summary["files"] == 3 and len(summary["folds"]) == 3
    files = [f for fold in summary["folds"] for f in fold["files"]]
    assert sorted(files) == sorted(f"realAWSCloudwatch/{p.name}"
                                   for p in (SHIPPED_NAB / "realAWSCloudwatch").glob("*.csv"))
    assert summary["seconds"] < 60
    for fold in summary["folds"]:
        assert len(fold["files"]) == 1
        assert fold["chosen"] in ({"value_short": 0}, {"value_short": 4})
        assert isinstance(fold["train_score"], float) and isinstance(fold["held_score"], float)
    assert json.loads((out / "nab_cv.json").read_text()) == summary


def test_a_fold_without_labelled_windows_to_choose_on_is_refused() -> None:
    truth = corpus_with_window(500)
    truth[1] = replace(truth[1], windows=[])
    scores = [[spike(505) for _ in range(4)]]
    with pytest.raises(ConfigError, match="no labelled window"):
        nab_cv.cross_validate(scores, truth, [[0, 2, 3], [1]])
