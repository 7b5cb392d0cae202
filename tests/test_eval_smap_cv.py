"""`streamer eval smap --cv K`: folds by channel, a declared search space, choices made without the held labels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation import smap, smap_cv
from streamer.errors import ConfigError
from tests.helpers import parse_cli

SMAP = Path(__file__).resolve().parents[1] / "data" / "smap"


def test_search_space_covers_threshold_settings_only() -> None:
    configs = smap_cv.configurations()
    assert len(configs) == 20 and len({json.dumps(c, sort_keys=True) for c in configs}) == 20
    with pytest.raises(ConfigError, match="unknown or fixed"):
        smap_cv.configurations((({"epochs": 10},),))  # the forecaster is fitted once: never searched
    with pytest.raises(ConfigError, match="unknown or fixed"):
        smap_cv.configurations((({"no_such_field": 1},),))


def test_rates_sum_the_counts_over_channels() -> None:
    p, r, f1 = smap.rates([{"tp": 3, "fp": 1, "fn": 0}, {"tp": 1, "fp": 0, "fn": 4}])
    assert (p, r) == (0.8, 0.5) and f1 == pytest.approx(2 * 0.4 / 1.3)
    assert smap.rates([{"tp": 0, "fp": 0, "fn": 0}]) == (0.0, 0.0, 0.0)


def test_a_folds_choice_never_sees_the_held_channels_labels() -> None:
    """Changing what the held channels' counts would be under each configuration never changes their fold's pick."""
    rng = np.random.default_rng(0)
    n_cfg, n_ch = 4, 9
    counts = [[{"tp": int(rng.integers(0, 3)), "fp": int(rng.integers(0, 3)), "fn": int(rng.integers(0, 3))}
               for _ in range(n_ch)] for _ in range(n_cfg)]
    names = [f"A-{i}" for i in range(n_ch)]
    folds = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    base = smap_cv.cross_validate(counts, names, folds)
    for c in range(n_cfg):  # make configuration c perfect on fold 0's channels only
        moved = [[dict(x) for x in per] for per in counts]
        for i in folds[0]:
            moved[c][i] = {"tp": 5, "fp": 0, "fn": 0}
        assert smap_cv.cross_validate(moved, names, folds)["folds"][0]["chosen"] == base["folds"][0]["chosen"]
    everything = list(range(n_ch))
    perfect = [[dict(x) for x in per] for per in counts]
    perfect[2] = [{"tp": 1, "fp": 0, "fn": 0}] * n_ch
    assert smap_cv.choose(perfect, everything).config == 2
    held = smap_cv.cross_validate(perfect, names, folds)
    assert (held["cv_precision"], held["cv_recall"]) == (1.0, 1.0)


def test_thresholding_errors_equals_streaming_the_channel(one_torch_thread: None) -> None:
    """Re-thresholding the stored errors under a configuration gives what streaming with it gives."""
    t = np.arange(3000, dtype=np.float32)
    data = np.zeros((3000, 25), dtype=np.float32)
    data[:, 0] = np.sin(t / 15)
    data[2600:2640, 0] += 2.0
    ch = smap.Channel("synthetic", data[:1500], data[1500:], [(1100, 1140)])
    cfg = smap.SmapConfig(epochs=20, skip=20)
    model = smap.fit_channel(ch, cfg)
    _, err = smap.channel_errors(ch, model, cfg)
    for over in smap_cv.configurations()[::5]:
        c = replace(cfg, **over)
        assert smap.detect(ch, err, c)["sequences"] == smap.stream_channel(ch, model, c)["sequences"]


def test_eval_smap_cv_on_a_small_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       one_torch_thread: None) -> None:
    out = tmp_path / "out"
    args = parse_cli(["eval", "smap", "--data", str(SMAP), "--out", str(out), "--json", "--quiet", "--epochs", "3",
                  "--channels", "A-6,P-1,E-1,A-7", "--max-rows", "2500", "--cv", "2"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert "cross-validated" in printed and "in sample" in printed
    for key in ("cv_precision", "cv_recall", "in_sample_precision", "in_sample_recall", "precision", "recall"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["channels"] == 4 and len(summary["folds"]) == 2
    assert sorted(c for f in summary["folds"] for c in f["channels"]) == ["A-6", "A-7", "E-1", "P-1"]
    assert json.loads((out / "smap_cv.json").read_text())["cv_recall"] == summary["cv_recall"]
