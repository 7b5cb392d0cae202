"""benchmarks.occupancy_cv: day folds of datatraining.txt and the cross-validated choice, on one short fold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import occupancy_cv

TRAIN = Path(__file__).resolve().parents[1] / "data" / "occupancy" / "datatraining.txt"


def test_folds_are_whole_days_after_the_first_two() -> None:
    folds = occupancy_cv.day_folds(TRAIN)
    assert [d for d, _, _ in folds] == ["2015-02-06", "2015-02-07", "2015-02-08", "2015-02-09", "2015-02-10"]
    assert all(b == c for (_, _, b), (_, c, _) in zip(folds, folds[1:], strict=False))  # contiguous
    assert folds[0][2] - folds[0][1] == 1440 and folds[-1][2] == 8143


def test_fold_config_trains_before_the_held_day_only() -> None:
    cfg = occupancy_cv.fold_config(TRAIN, 1809, 3249, (1, "0.5", 3), 2, None)
    assert cfg["split"]["rows"] == {"train": [0, 1537], "val": [1537, 1809], "test": [1809, 3249]}
    assert cfg["model"]["context"] == 1 and cfg["train"]["refit_threshold"] == 0.5 and cfg["train"]["seed"] == 2
    assert cfg["train"]["ensemble"] == 3 and "events" not in cfg  # the run length is scored, not trained
    assert "test_path" not in cfg["data"]  # datatest.txt is not read


def test_the_choice_is_the_fewest_wrong_minutes_within_the_false_event_budget(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--epochs", "1", "--max-folds", "1", "--seeds", "0", "--runs", "1,3", "--ensembles", "1", "--workers", "1",
            "--json"]
    assert occupancy_cv.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["held_day"] for f in out["folds"]] == ["2015-02-06"]
    totals, per_day = out["total_wrong_minutes"], out["false_events_per_day"]
    assert set(totals) == {f"context={c} refit_threshold={t} ensemble=1 min_run={r}"
                           for c in (0, 1) for t in ("first", "0.5") for r in (1, 3)}
    c = out["chosen"]
    chosen = (f"context={c['context']} refit_threshold={c['refit_threshold']} ensemble={c['ensemble']} "
              f"min_run={c['min_run']}")
    within = [k for k in totals if per_day[k] <= occupancy_cv.FALSE_PER_DAY]
    if within:
        assert chosen in within and totals[chosen] == min(totals[k] for k in within)
    else:
        assert per_day[chosen] == min(per_day.values())
    for by_seed in out["wrong_minutes"].values():
        assert all(0 <= v <= 1440 for v in by_seed["0"])


def test_the_nested_figure_scores_each_day_with_the_choice_of_the_other_days() -> None:
    # "a" wins days 0 and 1 and fails day 2; "b" is steady: chosen in sample and whenever day 2 is among the others
    result = {"space": {"seeds": [0]},
              "folds": [{"held_day": d, "minutes": 1440} for d in ("d0", "d1", "d2")],
              "wrong_minutes": {"a": {"0": [1, 1, 90]}, "b": {"0": [10, 10, 10]}},
              "false_events": {"a": {"0": [0, 0, 1]}, "b": {"0": [1, 1, 1]}}}
    best, totals, _ = occupancy_cv.choose(result["wrong_minutes"], result["false_events"], [1440] * 3, range(3))
    assert best == "b" and totals == {"a": 92, "b": 30}
    out = occupancy_cv.nested(result)
    assert [d["chosen"] for d in out["days"]] == ["b", "b", "a"]
    assert out["wrong_minutes"] == 10 + 10 + 90 and out["false_events_per_day"] == 1.0
    assert occupancy_cv.nested({**result, "folds": result["folds"][:1]}) is None  # one day: nothing to choose on


def test_a_candidate_over_the_false_event_budget_is_not_chosen() -> None:
    errors = {"few": {"0": [0, 0]}, "many": {"0": [5, 5]}}
    false_events = {"few": {"0": [3, 3]}, "many": {"0": [1, 1]}}
    assert occupancy_cv.choose(errors, false_events, [1440, 1440], range(2))[0] == "many"
