"""Data loading, splits without leakage, train-only normalisation, baselines and event metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.errors import ConfigError
from training.baselines import forecast_baselines, seasonal_naive
from training.data import FeatureSpec, Normalizer, fingerprint, load_csv, load_npy, split_fractions, split_rows
from training.evaluate import calibrate_event_threshold, event_metrics, forecast_origins

DATA = Path(__file__).resolve().parents[1] / "data"
ETT = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
OCC = ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio")


def test_occupancy_rows_have_a_leading_row_id() -> None:
    spec = FeatureSpec(OCC, label="Occupancy")
    train = load_csv(DATA / "occupancy" / "datatraining.txt", spec, "date")[0]
    test = load_csv(DATA / "occupancy" / "datatest.txt", spec, "date")[0]
    assert len(train) == 8143 and len(test) == 2665
    assert train.values[0].tolist() == pytest.approx([23.18, 27.272, 426, 721.25, 0.00479298817650529])
    assert set(np.unique(test.labels)) == {0.0, 1.0}
    assert int((np.diff(test.labels) == 1).sum()) == 13  # 13 onsets, as the data README says
    assert np.all(np.diff(train.ts) > 0)


def test_ett_protocol_split_normalisation_and_repeat_baseline() -> None:
    s = load_csv(DATA / "ett" / "ETTh1.csv", FeatureSpec(ETT), "date")[0]
    assert len(s) == 17420
    sp = split_rows(s, {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)})
    norm = Normalizer.fit([sp["train"]])
    x = norm.apply(s.values)
    np.testing.assert_allclose(x[:8640].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x[:8640].std(0), 1, atol=1e-4)
    assert abs(x[8640:].mean()) > 0.01  # statistics come from train rows only
    org = forecast_origins(11520, 14400, 96)
    assert len(org) == 2785 and org[0] == 11519 and org[-1] + 96 == 14399
    b = forecast_baselines(x, org, 96, 24)
    assert b["repeat_mse"] == pytest.approx(1.295, abs=0.005)
    assert b["repeat_mae"] == pytest.approx(0.713, abs=0.005)


def test_splits_refuse_overlap_and_out_of_range() -> None:
    s = load_csv(DATA / "ett" / "ETTh1.csv", FeatureSpec(("OT",)), "date")[0]
    with pytest.raises(ConfigError, match="leakage"):
        split_rows(s, {"train": (0, 100), "val": (90, 200)})
    with pytest.raises(ConfigError, match="outside"):
        split_rows(s, {"train": (0, 20000)})
    sp = split_fractions(s.slice(0, 100), val=0.2, test=0.1)
    assert [(v.lo, v.hi) for v in sp.values()] == [(0, 70), (70, 90), (90, 100)]


def test_long_form_csv_npy_and_derived_categorical(tmp_path: Path) -> None:
    p = tmp_path / "long.csv"
    p.write_text("stream,timestamp,a,b\nx,2024-01-01T01:00:00,1,2\ny,2024-01-01T00:00:00,3,4\n"
                 "x,2024-01-01T00:00:00,5,6\n")
    spec = FeatureSpec(("a", "b"), (("@hour", 24),))
    streams = {s.stream: s for s in load_csv(p, spec, "timestamp", "stream")}
    assert streams["x"].values.tolist() == [[5, 6], [1, 2]]  # sorted by time
    assert streams["x"].categorical[:, 0].tolist() == [0, 1]
    with pytest.raises(ConfigError, match="not in header"):
        load_csv(p, FeatureSpec(("zz",)), "timestamp")
    np.save(tmp_path / "chan.npy", np.ones((5, 25)))
    assert load_npy(tmp_path / "chan.npy").values.shape == (5, 25)
    with pytest.raises(ConfigError, match="25 channels"):
        load_npy(tmp_path / "chan.npy", FeatureSpec(("a",)))


def test_fingerprint_changes_with_training_rows_only() -> None:
    s = load_csv(DATA / "ett" / "ETTh1.csv", FeatureSpec(("OT",)), "date")[0]
    a = fingerprint([split_rows(s, {"train": (0, 100)})["train"]])
    s.values[200] += 1
    assert fingerprint([split_rows(s, {"train": (0, 100)})["train"]]) == a
    s.values[50] += 1
    assert fingerprint([split_rows(s, {"train": (0, 100)})["train"]])["train_rows_sha256"] != a["train_rows_sha256"]


def test_seasonal_naive_repeats_the_previous_period() -> None:
    x = np.arange(30, dtype=float)[:, None]
    pred = seasonal_naive(x, np.array([9]), 5, 4)
    assert pred[:, :, 0].tolist() == [[6, 7, 8, 9, 6]]


def test_event_metrics_onsets_offsets_within_tolerance() -> None:
    lab = np.array([0] * 10 + [1] * 10 + [0] * 10 + [1] * 5 + [0] * 5, dtype=float)
    prob = np.roll(lab, 2)  # two steps late: detected at tolerance 2, not at 1
    m2 = event_metrics(prob, lab, 0.5, tol=2)
    assert m2["onset_recall"] == 1.0 and m2["offset_recall"] == 1.0 and m2["onset_delay_mean"] == 2
    assert event_metrics(prob, lab, 0.5, tol=1)["onset_recall"] == 0.0
    assert m2["accuracy"] == pytest.approx(1 - 8 / 40)


def test_event_threshold_is_calibrated_within_bounds_and_prefers_one_half() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.4).astype(np.float32)
    # negatives scored about 0.75: the best validation threshold is about 0.85, yet it is bounded by 0.7
    prob = np.clip(np.where(labels > 0, 0.95, 0.75) + 0.02 * rng.normal(size=2000), 0, 1)
    assert calibrate_event_threshold(prob, labels) == pytest.approx(0.7)
    assert calibrate_event_threshold(prob, labels, low=0.05, high=0.95) > 0.8  # unbounded it goes further
    # perfectly separated classes: every threshold in a wide band is best; the tie goes to 0.5
    clean = np.where(labels > 0, 0.95, 0.05)
    assert calibrate_event_threshold(clean, labels) == pytest.approx(0.5)
