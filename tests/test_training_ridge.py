"""The delay line's map solved in closed form (training/ridge.py): the solution, the choice on validation rows, and
the served model forecasting what the solution says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer import checkpoints
from streamer.errors import ConfigError
from streamer.models import ModelConfig, build_model
from tests.test_training_cli import ETT_TOML
from training import ridge
from training.delay import DelayLine, export
from training.evaluate import forecast_targets, predict_stream
from training.layout import Stream
from training.pipeline import run


def _series(n: int = 700, f: int = 2, seed: int = 0) -> np.ndarray:
    """A noisy daily-like rhythm per channel plus a random walk: something a linear map of lags forecasts."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return np.sin(2 * np.pi * t / 24 + np.arange(f)) + 0.1 * np.cumsum(rng.standard_normal((n, f)), axis=0) * 0.1 \
        + 0.1 * rng.standard_normal((n, f))


def _design(x: np.ndarray, origins: np.ndarray, L: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """The regression written out row by row (window t, channel c), independently of the blocked code."""
    rows, targets = [], []
    for t in origins:
        for c in range(x.shape[1]):
            rows.append([x[t - k, c] - x[t, c] for k in range(1, L)])
            targets.append([x[t + 1 + h, c] - x[t, c] for h in range(H)])
    return np.array(rows), np.array(targets)


def test_the_solution_is_least_squares_over_every_training_window_and_channel() -> None:
    x, L, H = _series(), 12, 5
    got = ridge.fit_nlinear(x, (0, 400), (400, 550), L, H, [0.0])
    feats, targets = _design(x, ridge.window_origins(0, 400, L, H), L, H)
    want = np.linalg.lstsq(feats, targets, rcond=None)[0]
    np.testing.assert_allclose(got.A[:, 1:].T, want, rtol=1e-6, atol=1e-8)
    assert np.all(got.A[:, 0] == 0.0)
    assert got.train_windows == 400 - H - (L - 1)  # origins L-1 .. 400-H-1: only full delay lines


def test_the_ridge_is_the_one_with_the_lowest_validation_error_and_test_rows_are_never_read() -> None:
    x, L, H = _series(seed=1), 10, 4
    grid = [0.0, 1.0, 1e3, 1e6]
    got = ridge.fit_nlinear(x, (0, 400), (400, 550), L, H, grid)
    assert got.ridge == min(grid, key=lambda r: got.val_mse[r])
    assert got.val_mse[1e6] > got.val_mse[got.ridge]  # a huge penalty shrinks the map to repeat-last
    poisoned = x.copy()
    poisoned[550:] = np.nan  # rows after validation
    again = ridge.fit_nlinear(poisoned, (0, 400), (400, 550), L, H, grid)
    np.testing.assert_array_equal(again.A, got.A)


def test_the_served_model_forecasts_what_the_closed_form_says() -> None:
    x, L, H, F = _series(f=3, seed=2).astype(np.float32), 16, 6, 3
    got = ridge.fit_nlinear(x, (0, 450), (450, 600), L, H, [1.0, 100.0])
    model = build_model(ModelConfig(family="gru", n_features=F, hidden=L * F, heads=("forecast",), horizon=H))
    head = DelayLine(model, L).parametrize_head()
    with torch.no_grad():
        head.A.copy_(torch.from_numpy(got.A).float())
    export(model)
    out = predict_stream(model, Stream("s", x), chunk=97, heads=("forecast",))["forecast"]
    org = ridge.window_origins(450, 600, L, H)
    mse = float(np.mean((out[org] - forecast_targets(x, org, H)) ** 2))
    assert mse == pytest.approx(got.val_mse[got.ridge], rel=1e-3)  # the delay line holds eps * x to ~1e-4


def test_bad_settings_fail_naming_them() -> None:
    x = _series()
    with pytest.raises(ConfigError, match="ridge"):
        ridge.fit_nlinear(x, (0, 400), (400, 550), 8, 4, [])
    with pytest.raises(ConfigError, match="context"):
        ridge.fit_nlinear(x, (0, 400), (400, 550), 1, 4, [1.0])


def _toml(extra_train: str, model_hidden: int = 4, context: int = 8) -> str:
    text = ETT_TOML.replace("hidden = 4\ncontext = 8", f"hidden = {model_hidden}\ncontext = {context}")
    return text.replace("[train]\n", f"[train]\n{extra_train}\n")


def test_train_with_epochs_0_serves_the_closed_form_map(tmp_path: Path) -> None:
    cfg = tmp_path / "ett.toml"
    cfg.write_text(_toml("ridge = [1.0, 1000.0]", model_hidden=0).replace("epochs = 2", "epochs = 0"))
    metrics = run(cfg, tmp_path / "run", progress=False)
    closed = metrics["closed_form"]
    assert set(closed["val_mse_by_ridge"]) == {"1.0", "1000.0"} and metrics["epochs_run"] == 0
    model, meta = checkpoints.load(tmp_path / "run" / "checkpoint")
    assert meta["training"]["config"]["ridge"] == [1.0, 1000.0]
    saved = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert saved["test_mse"] < saved["repeat_mse"]  # a fitted map beats repeat-last on the test rows
    assert (tmp_path / "run" / "report" / "ridge_validation.png").stat().st_size > 1000
    assert not (tmp_path / "run" / "report" / "loss_curves.png").exists()  # no epoch ran: no empty plot


def test_gradient_epochs_after_the_closed_form_keep_it_unless_validation_improves(tmp_path: Path) -> None:
    cfg = tmp_path / "ett.toml"
    cfg.write_text(_toml("ridge = [10.0]\nlr = 0.5"))  # a learning rate that only makes things worse
    metrics = run(cfg, tmp_path / "run", progress=False)
    hist = checkpoints.load(tmp_path / "run" / "checkpoint")[1]["training"]["history"]
    assert hist["initial_val_loss"] is not None
    assert (tmp_path / "run" / "report" / "loss_curves.png").exists()
    if metrics["best_epoch"] == 0:  # no epoch validated better: the closed-form weights are served
        assert all(v >= hist["initial_val_loss"] - 1e-6 for v in hist["val_loss"])
    else:
        assert min(hist["val_loss"]) < hist["initial_val_loss"]


def test_ridge_without_a_delay_line_and_zero_epochs_without_ridge_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(_toml("ridge = [1.0]").replace("context = 8\n", ""))
    with pytest.raises(ConfigError, match="ridge"):
        run(cfg, tmp_path / "a", progress=False)
    cfg.write_text(ETT_TOML.replace("epochs = 2", "epochs = 0"))
    with pytest.raises(ConfigError, match="epochs"):
        run(cfg, tmp_path / "b", progress=False)
