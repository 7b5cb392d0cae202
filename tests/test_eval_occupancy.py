"""`streamer eval occupancy`: the event-matching metric on hand-made cases, and the command end to end on a small
slice of the real data (JSON keys, output files, and no look-ahead through the engine and the event detector)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from lab.eval_cli import register
from lab.evaluation import occupancy as occ
from tests.helpers import first_rows

DATA = Path(__file__).resolve().parents[1] / "data" / "occupancy"
KEYS = ("accuracy", "onset_recall", "offset_recall", "long_onset_recall", "long_offset_recall", "mean_delay_min",
        "false_events_per_day")


# ------------------------------------------------------------------------------------------------ matching metric


def test_boundaries_are_first_rows_of_the_new_value() -> None:
    on, off = occ.boundaries(np.array([1, 1, 0, 0, 1, 1, 1, 0]))
    assert on.tolist() == [4] and off.tolist() == [2, 7]  # no onset at row 0: the stream starts there


def test_match_within_tolerance_one_to_one() -> None:
    assert occ.match(np.array([10]), np.array([12]), 2) == [(0, 0)]
    assert occ.match(np.array([10]), np.array([13]), 2) == []
    assert occ.match(np.array([10]), np.array([7, 8]), 2) == [(0, 1)]
    # one detection cannot serve two true boundaries
    assert len(occ.match(np.array([10, 11]), np.array([10]), 2)) == 1
    # two detections near one true boundary: one matches, the other is left over (a false event)
    assert len(occ.match(np.array([10]), np.array([9, 11]), 2)) == 1


def test_match_is_maximum_not_greedy_nearest() -> None:
    # nearest-first would give true 2 the detection at 3 and leave true 5 unmatched; both can be matched
    pairs = occ.match(np.array([2, 5]), np.array([3, 1]), 2)
    assert sorted(pairs) == [(0, 1), (1, 0)]


def test_event_scores_hand_made() -> None:
    lab = np.array([0] * 10 + [1] * 10 + [0] * 10 + [1] * 10, dtype=np.int8)  # onsets 10, 30; offset 20
    pred = np.zeros(40, dtype=np.int8)
    pred[12:21] = 1  # onset 2 late (hit), offset 1 late (hit)
    pred[35:] = 1  # onset 5 late: missed
    pred[25:26] = 1  # a spurious event: onset 25 and offset 26, both false
    on_d, off_d = occ.boundaries(pred)
    s = occ.event_scores(lab, pred, on_d, off_d, tol=2, rows_per_day=40)
    assert s["onsets"] == 2 and s["offsets"] == 1
    assert s["onset_recall"] == 0.5 and s["offset_recall"] == 1.0
    assert s["false_events"] == 3  # onsets 25 and 35, offset 26
    assert s["false_events_per_day"] == pytest.approx(3.0)
    assert s["mean_delay_min"] == pytest.approx((2 + 1) / 2)
    assert s["accuracy"] == pytest.approx(1 - (2 + 1 + 1 + 5) / 40)
    assert s["onset_missed_rows"] == [30]


def test_long_boundaries_separate_runs_of_at_least_five_minutes_on_both_sides() -> None:
    lab = np.array([0] * 10 + [1] * 3 + [0] * 10 + [1] * 10 + [0] * 2 + [1] * 10 + [0] * 6, dtype=np.int8)
    on, off = occ.boundaries(lab)
    assert on.tolist() == [10, 23, 35] and off.tolist() == [13, 33, 45]
    assert occ.long_boundary_mask(lab, on).tolist() == [False, True, False]  # runs (10, 3), (10, 10), (2, 10)
    assert occ.long_boundary_mask(lab, off).tolist() == [False, False, True]  # (3, 10), (10, 2), (10, 6)
    det_on = np.array([10, 26, 35])  # the long onset found 3 minutes late: missed at +-2
    s = occ.event_scores(lab, lab, det_on, off, tol=2)
    assert s["long_onsets"] == 1 and s["long_onset_recall"] == 0.0 and s["onset_recall"] == pytest.approx(2 / 3)
    assert s["long_offsets"] == 1 and s["long_offset_recall"] == 1.0


def test_event_scores_uses_emission_time_for_delay_and_ignores_row_zero() -> None:
    lab = np.array([1, 1, 0, 0, 1, 1], dtype=np.int8)
    s = occ.event_scores(lab, lab, np.array([0, 4]), np.array([2]), onset_emitted=np.array([2, 6]),
                         offset_emitted=np.array([3]), tol=0)
    assert s["onset_recall"] == 1.0 and s["offset_recall"] == 1.0 and s["false_events"] == 0
    assert s["mean_delay_min"] == pytest.approx((2 + 1) / 2)


# ------------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("occ")
    train = first_rows(DATA / "datatraining.txt", root / "train.txt", 2400)
    test = first_rows(DATA / "datatest.txt", root / "test.txt", 600)
    out = root / "out"
    parser = argparse.ArgumentParser(prog="streamer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "occupancy", "--train", str(train), "--test", str(test), "--out", str(out),
                              "--json", "--epochs", "2", "--quiet", "--threads", "1"])
    return {"args": args, "out": out, "test": test}


def test_eval_occupancy_json_files_and_plot(evaluated: dict, capsys: pytest.CaptureFixture[str]) -> None:
    args = evaluated["args"]
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in KEYS:
        assert k in summary
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["rows"] == 600
    # the checkpoint's memoryless baseline on the same minutes, and which wrong minutes the two share
    b = summary["baseline_lda"]
    assert b["model_errors"] == summary["errors"] == round((1 - summary["accuracy"]) * 600)
    assert b["baseline_errors"] == round((1 - b["accuracy"]) * 600)
    assert b["shared_errors"] + b["model_only_errors"] == b["model_errors"]
    assert b["shared_errors"] + b["baseline_only_errors"] == b["baseline_errors"]
    out = evaluated["out"]
    for name in ("summary.json", "rows.csv", "events.json", "occupancy.png", "train/checkpoint/meta.json"):
        assert (out / name).is_file(), name
    assert (out / "occupancy.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "rows.csv").read_text().splitlines()
    assert rows[0] == "ts,probability,active,label" and len(rows) == 601


def test_eval_occupancy_no_look_ahead(evaluated: dict) -> None:
    """Changing a future reading changes no earlier probability, detector state or event message."""
    from streamer.checkpoints import read_meta
    from streamer.model_source import load_checkpoint
    from training.data import FeatureSpec, load_csv

    ckpt = evaluated["out"] / "train" / "checkpoint"
    if not (ckpt / "meta.json").exists():
        args = evaluated["args"]
        args.func(args)
    served = load_checkpoint(ckpt)
    meta = read_meta(ckpt)
    s = load_csv(evaluated["test"], FeatureSpec.from_dict(meta["features"]))[0]
    settings = occ.EventSettings(chunk=37)
    thr = float(meta["thresholds"]["event"])
    # an on level inside the probabilities' range, so that events do happen in this short slice
    a = occ.stream_test(served, s.ts, s.values, settings, thr)
    k = 300
    changed = s.values.copy()
    changed[k:, 2] = changed[k:, 2] * 3 + 500  # Light, from row k on
    changed[k + 5, 3] = 5000.0  # a CO2 spike
    b = occ.stream_test(served, s.ts, changed, settings, thr)
    np.testing.assert_array_equal(a["prob"][:k], b["prob"][:k])
    np.testing.assert_array_equal(a["active"][:k], b["active"][:k])
    assert not np.array_equal(a["prob"][k:], b["prob"][k:])
    t_k = int(s.ts[k])
    assert [m for m in a["messages"] if m["ts"] < t_k] == [m for m in b["messages"] if m["ts"] < t_k]
    # any chunking gives the same outputs as one reading at a time, to float32 rounding: the linear path reads
    # readings held at 1e-3 of their size through weights 1e3 times larger, so a chunked step and a single one
    # differ by about 1e-6 in probability
    c = occ.stream_test(served, s.ts, s.values, occ.EventSettings(chunk=1), thr)
    np.testing.assert_allclose(a["prob"], c["prob"], rtol=0, atol=1e-5)


def test_example_config_is_the_built_in_default() -> None:
    """examples/occupancy.toml and DEFAULT_TRAINING train the same model (data paths aside)."""
    from training.pipeline import load_config

    cfg = load_config(DATA.parents[1] / "examples" / "occupancy.toml")
    for key in ("path", "test_path"):
        assert Path(cfg["data"].pop(key)).name == {"path": "datatraining.txt", "test_path": "datatest.txt"}[key]
    assert cfg == occ.DEFAULT_TRAINING
