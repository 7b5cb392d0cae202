"""Training pieces added for occupancy: time-of-day inputs derived from timestamps, transition-weighted BCE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.errors import ConfigError
from training.data import FeatureSpec, derived_numeric, load_csv
from training.fit import task_loss, transition_weights

DATA = Path(__file__).resolve().parents[1] / "data" / "occupancy"


def test_time_of_day_inputs_from_the_timestamp_only() -> None:
    ms = np.array([0, 6 * 3600_000, 12 * 3600_000, 18 * 3600_000], dtype=np.int64)  # 1970-01-01 was a Thursday
    np.testing.assert_allclose(derived_numeric("@tod_sin", ms), [0, 1, 0, -1], atol=1e-12)
    np.testing.assert_allclose(derived_numeric("@tod_cos", ms), [1, 0, -1, 0], atol=1e-12)
    sat = np.array([2 * 86400_000 + 60_000], dtype=np.int64)
    assert derived_numeric("@weekend", sat)[0] == 1.0 and derived_numeric("@weekend", ms)[0] == 0.0
    with pytest.raises(ConfigError):
        derived_numeric("@nope", ms)


def test_derived_inputs_load_beside_the_file_columns(tmp_path: Path) -> None:
    lines = (DATA / "datatest.txt").read_text().splitlines()[:4]
    f = tmp_path / "t.txt"
    f.write_text("\n".join(lines) + "\n")
    s = load_csv(f, FeatureSpec(("Light", "@tod_sin", "@tod_cos"), (), "Occupancy"), "date")[0]
    assert s.values.shape == (3, 3)
    ang = 2 * np.pi * (14 * 60 + 19) / 1440  # first row: 2015-02-02 14:19:00
    np.testing.assert_allclose(s.values[0, 1:], [np.sin(ang), np.cos(ang)], atol=1e-9)


def test_transition_weights_and_weighted_bce() -> None:
    w = transition_weights(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 4.0, 1)
    assert w.tolist() == [1, 1, 1, 5, 5, 5, 1, 1, 1, 1]
    logits = torch.tensor([[0.3, -0.2, 1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    plain = task_loss("event", {"event": logits[..., None]}, y, mask)
    same = task_loss("event", {"event": logits[..., None]}, y, mask, weight=torch.ones(1, 3))
    assert float(plain) == pytest.approx(float(same))
    heavy = task_loss("event", {"event": logits[..., None]}, y, mask, weight=torch.tensor([[3.0, 1.0, 100.0]]))
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :2], y[0, :2], reduction="none")
    assert float(heavy) == pytest.approx(float((3 * per[0] + per[1]) / 2))  # the masked step never counts
