"""`streamer eval smap` on a small slice (two channels, first rows), Telemanom's event-level counting, pruning,
buffered threshold objective and inverted errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation import smap
from streamer.detectors.thresholds import TelemanomSequences, telemanom_epsilon, telemanom_prune
from tests.helpers import parse_cli

SMAP = Path(__file__).resolve().parents[1] / "data" / "smap"


def test_event_level_counts_follow_telemanom() -> None:
    labels = [(100, 200), (500, 520)]
    assert smap.score_channel([(190, 260), (700, 710)], labels) == {"tp": 1, "fn": 1, "fp": 1}
    assert smap.score_channel([], labels) == {"tp": 0, "fn": 2, "fp": 0}
    assert smap.score_channel([(0, 1000)], labels) == {"tp": 2, "fn": 0, "fp": 0}
    assert smap.merge([(5, 9), (1, 3), (4, 4), (20, 30)]) == [(1, 9), (20, 30)]


def test_pruning_keeps_only_sequences_that_stand_out() -> None:
    assert telemanom_prune([10.0, 5.0], 1.0, 0.13) == [True, True]
    assert telemanom_prune([10.0, 9.5], 9.0, 0.13) == [False, False]  # no drop of 13% anywhere
    assert telemanom_prune([10.0, 9.5, 3.0], 2.9, 0.13) == [True, True, False]


def test_telemanom_sequences_flag_a_burst_once_decided() -> None:
    rng = np.random.default_rng(0)
    err = np.abs(rng.normal(0, 0.05, 3000))
    err[2000:2050] += 1.0
    det = TelemanomSequences()
    st = det.init_state()
    out = det.step(st, np.arange(3000), err, np.sin(np.arange(3000) / 50))
    rows = np.array(out["anomalous"])
    assert rows.size and rows.min() >= 1990 and rows.max() < 2300
    assert all(d >= r for r, d in zip(out["anomalous"], out["decided"], strict=True))  # decided later, never before


def test_buffered_epsilon_counts_nearby_spikes_as_one_sequence() -> None:
    rng = np.random.default_rng(0)
    e = np.abs(rng.normal(0, 0.05, 2000))
    e[1000:1140:20] += 0.5  # seven spikes 20 readings apart: seven sequences unbuffered, one within a buffer of 100
    z = np.arange(2.5, 12, 0.5)
    spikes, noise = e[1000:1140:20], np.delete(e, np.arange(1000, 1140, 20))
    plain, buffered = telemanom_epsilon(e, z), telemanom_epsilon(e, z, buffer=100)
    assert noise.max() < buffered < spikes.min()  # Telemanom's count: one sequence, all spikes above
    assert (spikes < plain).any()  # unbuffered: more than five sequences at every z below them, fallback too high


def test_inverted_errors_flag_a_drop_in_the_errors() -> None:
    rng = np.random.default_rng(1)
    err = 0.5 + np.abs(rng.normal(0, 0.05, 4000))
    err[2500:2700] = 0.0  # the forecast became exact: a signal gone flat, say
    values = np.sin(np.arange(4000) / 20)
    found = {}
    for invert in (False, True):
        det = TelemanomSequences(invert=invert, epsilon_buffer=100)
        found[invert] = np.array(det.step(det.init_state(), np.arange(4000), err, values)["anomalous"])
    assert found[False].size == 0
    assert found[True].size and found[True].min() >= 2490 and found[True].max() < 2800


def test_eval_smap_small_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str], one_torch_thread: None) -> None:
    out = tmp_path / "out"
    args = parse_cli(["eval", "smap", "--data", str(SMAP), "--out", str(out), "--json", "--quiet", "--epochs", "3",
                  "--channels", "A-6,P-1", "--max-rows", "2500"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["channels"] == 2
    assert 0.0 <= summary["precision"] <= 1.0 and 0.0 <= summary["recall"] <= 1.0
    assert summary["tp"] + summary["fn"] == summary["labelled_sequences"] == 2  # A-6, P-1: one each before 2500
    saved = json.loads((out / "channels" / "A-6.json").read_text())
    assert set(saved) >= {"predicted", "labelled", "tp", "fp", "fn"}
    assert (out / "best.png").stat().st_size > 0 and (out / "worst.png").stat().st_size > 0


def test_forecaster_is_fitted_on_ten_steps_and_scored_on_the_first(one_torch_thread: None) -> None:
    t = np.arange(1200, dtype=np.float32)
    data = np.zeros((1200, 25), dtype=np.float32)
    data[:, 0] = np.sin(t / 15)
    ch = smap.Channel("synthetic", data[:800], data[800:], [])
    cfg = smap.SmapConfig(epochs=60, skip=20)
    model = smap.fit_channel(ch, cfg)
    assert model.config.horizon == cfg.horizon == 10
    res = smap.stream_channel(ch, model, cfg)
    err = np.abs(res["pred"][50:] - ch.test[50:, 0])
    assert np.isnan(res["pred"][0]) and np.isfinite(res["pred"][1:]).all()
    assert err.mean() < 0.5 * np.abs(ch.test[50:, 0]).mean()  # far better than forecasting zero: it learnt
