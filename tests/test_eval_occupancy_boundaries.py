"""benchmarks.occupancy_boundaries: which labelled boundaries any sensor shows, on hand-made series and on the
real datatest.txt (the figures the report quotes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import occupancy_boundaries as ob

DATA = Path(__file__).resolve().parents[1] / "data" / "occupancy"


def test_alarm_runs_and_background() -> None:
    assert ob.alarm_runs(np.array([0, 1, 1, 0, 1, 0, 0, 1])) == 3
    assert ob.alarm_runs(np.array([], dtype=bool)) == 0
    lab = np.array([0] * 10 + [1] * 10, dtype=np.int8)  # onset at row 10
    bg = ob.background(lab, 2)
    assert not bg[8:13].any() and bg[:8].all() and bg[13:].all()


def test_trend_change_sees_a_slope_that_turns() -> None:
    x = np.concatenate([np.arange(10.0), 9.0 - np.arange(1.0, 11.0)])  # up 1/min, then down 1/min from row 10
    tc = ob.trend_change(x)
    assert np.nanargmin(tc) == 10 and tc[10] == pytest.approx(-2.0)
    assert np.isnan(tc[:4]).all() and np.isnan(tc[-2:]).all()


def test_a_step_at_the_boundary_is_visible_and_a_silent_boundary_is_not() -> None:
    rng = np.random.default_rng(0)
    n = 2880  # two days, one row a minute
    lab = np.zeros(n, dtype=np.int8)
    lab[1000:1500] = 1  # onset 1000 (light jumps there), offset 1500 (nothing moves)
    light = np.where(lab == 1, 400.0, 0.0)
    light[1500:1510] = 400.0  # the light stays on 10 minutes after the room empties
    values = {"Light": light + rng.normal(0, 1, n), "CO2": 500 + rng.normal(0, 3, n)}
    ts = np.arange(n, dtype=np.int64) * 60_000
    table = ob.boundary_table(ts, values, lab, tol=2, budget=2.0)
    by_row = {r["row"]: r for r in table}
    assert set(by_row) == {1000, 1500}
    on, off = by_row[1000], by_row[1500]
    assert on["kind"] == "onset" and on["visible"] and on["best_sensor"] == "Light"
    assert on["sensors"]["Light"]["false_per_day"] == 0.0 and on["sensors"]["Light"]["ratio"] > 10
    assert off["kind"] == "offset" and not off["visible"]
    s = ob.summarise(table, 2.0)
    assert s["onset_recall_upper_bound"] == 1.0 and s["offset_recall_upper_bound"] == 0.0


def test_in_sample_context_classifier_finds_separable_boundaries() -> None:
    lab = np.zeros(600, dtype=np.int8)
    lab[100:200] = 1
    lab[300:420] = 1
    x = np.stack([lab * 5.0 + np.random.default_rng(1).normal(0, 0.1, 600), np.zeros(600)], axis=1)
    s = ob.in_sample_context(x, lab, 2)
    assert s["accuracy"] == 1.0 and s["onset_recall"] == 1.0 and s["offset_recall"] == 1.0
    assert s["false_events_per_day"] == 0.0


def test_real_test_file_most_boundaries_are_invisible(capsys: pytest.CaptureFixture[str]) -> None:
    assert ob.main(["--no-model", "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["onsets"] == 13 and s["offsets"] == 13
    # the issue's >= 90% recall needs 12 of 13 of each; at most about half show in any sensor
    assert s["onsets_visible"] <= 7 and s["offsets_visible"] <= 7
    assert s["onset_recall_upper_bound"] < 0.9 and s["offset_recall_upper_bound"] < 0.9
    rows = {b["row"]: b for b in s["boundaries"]}
    assert rows[1131]["sensors"]["Light"]["change"] == 0.0  # 09:10 off with the light at 444 lux throughout
    assert rows[1674]["visible"] and rows[1674]["best_sensor"] == "Light"  # 18:13, the lights go out
    # issue 21's subset, boundaries between an absence and a presence of >= 5 minutes: 5 onsets and 6 offsets, of
    # which 2 and 3 show in a sensor, so recall >= 0.9 there is out of reach as well
    assert (s["long_onsets"], s["long_offsets"]) == (5, 6)
    assert (s["long_onsets_visible"], s["long_offsets_visible"]) == (2, 3)
    assert [r for r, b in rows.items() if b["long"] and b["kind"] == "onset"] == [218, 1400, 2479, 2494, 2541]
