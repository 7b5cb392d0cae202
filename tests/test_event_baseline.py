"""The memoryless event baseline (Fisher's LDA on the current reading) and the error overlap every event report shows:
the analytic discriminant on Gaussian classes, the published occupancy figure on the real files, and the report keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import first_rows
from training.baselines import LinearDiscriminant, error_overlap
from training.data import FeatureSpec, Normalizer, load_csv

DATA = Path(__file__).resolve().parents[1] / "data" / "occupancy"
CHANNELS = ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio")


def test_lda_is_the_bayes_log_odds_of_gaussian_classes_with_a_shared_covariance() -> None:
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
    mu0, mu1 = np.array([0.0, 0.0, 0.0]), np.array([1.0, -0.5, 0.8])
    n0, n1 = 60_000, 20_000
    chol = np.linalg.cholesky(cov)
    x = np.concatenate([mu0 + rng.standard_normal((n0, 3)) @ chol.T, mu1 + rng.standard_normal((n1, 3)) @ chol.T])
    y = np.r_[np.zeros(n0), np.ones(n1)]
    lda = LinearDiscriminant.fit(x, y)
    w = np.linalg.solve(cov, mu1 - mu0)
    b = -0.5 * (mu1 + mu0) @ w + np.log(n1 / n0)
    np.testing.assert_allclose(lda.weights, w, atol=0.03)
    assert abs(lda.bias - b) < 0.03
    probe = rng.standard_normal((5, 3))
    np.testing.assert_allclose(lda.logit(probe), probe @ w + b, atol=0.1)
    again = LinearDiscriminant.from_dict(json.loads(json.dumps(lda.to_dict())))
    np.testing.assert_array_equal(again.logit(probe), lda.logit(probe))


def test_lda_with_a_constant_channel_or_one_class() -> None:
    rng = np.random.default_rng(1)
    x = np.c_[rng.standard_normal(400), np.ones(400)]  # the second channel never moves (cov is singular)
    y = (x[:, 0] + 0.3 * rng.standard_normal(400) > 0).astype(float)
    lda = LinearDiscriminant.fit(x, y)
    assert lda is not None and np.isfinite(lda.weights).all() and lda.weights[0] > 0
    assert ((lda.logit(x) >= 0) == (y >= 0.5)).mean() > 0.85
    assert LinearDiscriminant.fit(x, np.zeros(400)) is None  # nothing to discriminate


def test_error_overlap_counts() -> None:
    lab = np.array([0, 0, 1, 1, 1, 0])
    model = np.array([0, 1, 1, 0, 1, 0])  # wrong at 1, 3
    base = np.array([1, 1, 1, 1, 1, 0])  # wrong at 0, 1
    assert error_overlap(lab, model, base) == {"model_errors": 2, "baseline_errors": 2, "shared_errors": 1,
                                               "model_only_errors": 1, "baseline_only_errors": 1}


def test_lda_on_occupancy_matches_the_published_figure() -> None:
    """Fitted on datatraining.txt (z-scored with its statistics), 56 wrong minutes of 2665 on datatest.txt: 97.90%,
    the paper's LDA figure (Candanedo & Feldheim 2016) that the recurrent model is measured against."""
    spec = FeatureSpec(CHANNELS, (), "Occupancy")
    train, test = (load_csv(DATA / f, spec, "date")[0] for f in ("datatraining.txt", "datatest.txt"))
    from training.data import Split

    norm = Normalizer.fit([Split(train, 0, len(train))])
    lda = LinearDiscriminant.fit(norm.apply(train.values), train.labels)
    wrong = int(((lda.logit(norm.apply(test.values)) >= 0) != (test.labels >= 0.5)).sum())
    assert len(test) == 2665 and wrong == 56
    assert round(100 * (1 - wrong / len(test)), 2) == 97.90


def test_event_report_and_checkpoint_carry_the_baseline(tmp_path: Path) -> None:
    """The pipeline fits the baseline on the rows the served model learned from (with a refit: train + validation)."""
    import torch

    from streamer.checkpoints import read_meta
    from training.pipeline import run

    torch.set_num_threads(1)
    path = first_rows(DATA / "datatraining.txt", tmp_path / "train.txt", 1200)
    cfg = {"data": {"path": str(path), "time_column": "date", "numeric": ["Light", "CO2"], "label": "Occupancy"},
           "split": {"val_fraction": 0.2, "test_fraction": 0.2},
           "model": {"family": "gru", "hidden": 4},
           "train": {"epochs": 2, "patience": 2, "batch": 4, "tbptt": 16, "seed": 3, "pos_weight": 1.0, "refit": True}}
    m = run(cfg, tmp_path / "out", progress=False)
    meta = read_meta(tmp_path / "out" / "checkpoint")
    assert meta["baselines"]["lda"]["method"] == "lda" and len(meta["baselines"]["lda"]["weights"]) == 2
    spec = FeatureSpec(("Light", "CO2"), (), "Occupancy")
    s = load_csv(path, spec, "date")[0]
    (t0, t1), (v0, v1), (e0, e1) = (meta["training"]["splits"][k] for k in ("train", "val", "test"))
    from training.data import Split

    norm = Normalizer.fit([Split(s, t0, t1)])
    x = norm.apply(s.values)
    expect = LinearDiscriminant.fit(x[t0:v1], s.labels[t0:v1])  # refit: train and validation rows
    np.testing.assert_allclose(meta["baselines"]["lda"]["weights"], expect.weights, rtol=1e-9)
    wrong = ((expect.logit(x[e0:e1]) >= 0) != (s.labels[e0:e1] >= 0.5))
    assert m["lda_errors"] == int(wrong.sum()) and m["lda_accuracy"] == pytest.approx(1 - wrong.mean())
    assert m["test_errors"] == round((1 - m["test_accuracy"]) * (e1 - e0))
    assert 0 <= m["shared_errors_with_lda"] <= min(m["test_errors"], m["lda_errors"])
    # out of sample on the validation rows for both: the LDA of the training rows alone, the first (unrefit) fit
    train_only = LinearDiscriminant.fit(x[t0:t1], s.labels[t0:t1])
    right = (train_only.logit(x[v0:v1]) >= 0) == (s.labels[v0:v1] >= 0.5)
    assert m["lda_val_accuracy"] == pytest.approx(right.mean())
    assert 0.0 <= m["val_accuracy_first_fit"] <= 1.0
    if m["test_errors"]:
        assert m["beats_lda_by"] == pytest.approx(m["lda_errors"] / m["test_errors"])

