"""Windowed reconstruction: bidirectional encoder, padding and masking, no look-ahead, training, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer import checkpoints
from streamer.errors import CheckpointError, ConfigError
from streamer.models import ModelConfig, build_model
from streamer.models.autoencoder import WindowAEConfig, WindowAutoencoder, masked_mse, masked_window_mse
from training import windowed
from training.windowed import WindowTrainConfig, fit_windowed, make_windows, score_series, window_bounds

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VARIANTS = [("gru", "rnn"), ("lstm", "rnn"), ("gru", "linear"), ("lstm", "linear")]


def _model(family: str = "gru", decoder: str = "rnn", **kw) -> WindowAutoencoder:
    torch.manual_seed(0)
    cfg = WindowAEConfig(family, kw.pop("n_features", 2), **{"window": 12, "hidden": 8, "latent": 4, **kw},
                         decoder=decoder)
    return WindowAutoencoder(cfg).eval()


def _sine(n: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    clean = np.stack([np.sin(2 * np.pi * t / 16 + phase), 0.5 * np.cos(2 * np.pi * t / 24 + phase)], axis=1)
    return 3.0 + 2.0 * clean + 0.05 * rng.standard_normal((n, 2))  # raw units: offset and scale


@pytest.mark.parametrize(("family", "decoder"), VARIANTS)
def test_padding_never_changes_encoding_or_masked_loss(family: str, decoder: str) -> None:
    """A window padded with garbage (NaN, huge values) beyond its length encodes and scores as the unpadded one."""
    model = _model(family, decoder, layers=2)
    x = torch.randn(1, 7, 2)
    z0, h0 = model.encode(x)
    r0 = model(x)
    loss0 = masked_mse(r0, x, torch.tensor([7]))
    for fill in (float("nan"), 1e6, 0.0):
        xp = torch.cat([x, torch.full((1, 5, 2), fill)], dim=1)  # padded to the window (12)
        lens = torch.tensor([7])
        z1, h1 = model.encode(xp, lens)
        r1 = model(xp, lens)
        assert torch.equal(z0, z1) and torch.equal(h0, h1)
        torch.testing.assert_close(r1[:, :7], r0, rtol=1e-6, atol=1e-7)
        assert torch.equal(r1[:, 7:], torch.zeros(1, 5, 2))  # padded steps reconstruct as 0
        torch.testing.assert_close(masked_mse(r1, xp, lens), loss0, rtol=1e-6, atol=1e-8)
        assert torch.isfinite(masked_window_mse(r1, xp, lens)).all()
    # in a batch of mixed lengths, each row is encoded as it is alone
    xb = torch.randn(3, 12, 2)
    lens = torch.tensor([12, 4, 9])
    zb, _ = model.encode(xb, lens)
    for r, n in enumerate(lens.tolist()):
        torch.testing.assert_close(zb[r : r + 1], model.encode(xb[r : r + 1, :n])[0], rtol=1e-5, atol=1e-6)


def test_masked_loss_ignores_padded_steps() -> None:
    """Masked MSE: padded steps (even NaN in input or output) neither count nor receive gradient."""
    x = torch.tensor([[[1.0], [2.0], [float("nan")]], [[0.0], [1.0], [3.0]]])
    recon = torch.tensor([[[1.5], [2.0], [float("nan")]], [[0.0], [0.0], [1.0]]], requires_grad=True)
    lens = torch.tensor([2, 3])
    per = masked_window_mse(recon, x, lens)
    torch.testing.assert_close(per, torch.tensor([[0.25 / 2], [(1.0 + 4.0) / 3]]))
    loss = masked_mse(recon, x, lens)
    torch.testing.assert_close(loss, torch.tensor((0.25 + 1.0 + 4.0) / 5))
    loss.backward()
    assert torch.isfinite(recon.grad).all() and recon.grad[0, 2, 0] == 0.0
    # gradients through the model: padded inputs get none, whatever they hold
    model = _model("lstm")
    xin = torch.randn(2, 12, 2)
    xin[0, 5:] = float("nan")
    xin.requires_grad_(True)
    lens = torch.tensor([5, 12])
    masked_mse(model(xin, lens), xin, lens).backward()
    assert torch.isfinite(xin.grad).all() and bool((xin.grad[0, 5:] == 0).all())
    assert bool(xin.grad[0, :5].abs().sum() > 0)


def test_bidirectional_encoder_sees_the_whole_window() -> None:
    """Changing the last step changes the backward summary and the reconstruction of the first step."""
    model = _model("gru", layers=1)
    x = torch.randn(1, 12, 2)
    x2 = x.clone()
    x2[0, -1] += 1.0
    _, h = model.encode(x)
    _, h2 = model.encode(x2)
    assert not torch.equal(h[:, 0], h2[:, 0])  # forward final state (its last input changed)
    assert not torch.equal(h[:, 1], h2[:, 1])  # backward final state: read the last step first, then the rest
    assert not torch.equal(model(x)[0, 0], model(x2)[0, 0])  # step 0's reconstruction depends on the future
    # a forward-only summary of the first 11 steps would not change; the backward half is what sees step 11
    x3 = x.clone()
    x3[0, 0] += 1.0
    _, h3 = model.encode(x3)
    assert not torch.equal(h[:, 1], h3[:, 1])  # the backward direction covers the window's start too


def test_score_of_a_window_reads_no_row_after_its_end() -> None:
    """Window k's score depends on rows [start_k, end_k) only: later rows can change freely."""
    model = _model("lstm", window=12)
    rng = np.random.default_rng(3)
    values = rng.standard_normal((60, 2))
    mean, std = np.zeros(2), np.ones(2)
    base = score_series(model, values, mean, std, stride=5)
    for cut in (17, 30, 44):
        changed = values.copy()
        changed[cut:] = rng.standard_normal((60 - cut, 2)) * 10
        s = score_series(model, changed, mean, std, stride=5)
        assert np.array_equal(s["end"], base["end"])
        done = s["end"] <= cut
        assert done.any() and (~done).any()
        np.testing.assert_allclose(s["score"][done], base["score"][done], rtol=1e-6, atol=0)
        assert not np.allclose(s["score"][~done], base["score"][~done])  # windows that contain the change move
    full = score_series(model, values, mean, std, stride=5, tail=False)
    assert (full["end"] - full["start"] == 12).all() and full["end"].max() <= 60


def test_windows_cover_tails_and_split_without_leakage() -> None:
    """Sliding windows with a padded tail; validation rows never reach training windows or statistics."""
    assert window_bounds(0, 20, 8, 4) == [(0, 8), (4, 12), (8, 16), (12, 20)]
    assert window_bounds(0, 22, 8, 4) == [(0, 8), (4, 12), (8, 16), (12, 20), (16, 22)]  # tail of 6, padded
    assert window_bounds(10, 15, 8, 4) == [(10, 15)]  # a part shorter than the window
    assert window_bounds(0, 9, 8, 8, min_len=2) == [(0, 8)]  # a tail shorter than min_len is dropped
    w = make_windows([np.arange(22, dtype=np.float32)[:, None]], [(0, 22)], 8, 4)
    assert w.lengths.tolist() == [8, 8, 8, 8, 6] and w.x[-1, 6:, 0].tolist() == [0.0, 0.0]
    rng = np.random.default_rng(0)
    data = [_sine(120, 0.0, rng), _sine(100, 1.0, rng)]
    cfg = WindowTrainConfig(stride=4, epochs=1, patience=1)
    mcfg = WindowAEConfig("gru", 2, window=16, hidden=8, latent=4)
    a = fit_windowed(data, mcfg, cfg)
    assert a.splits == [(96, 120), (80, 100)]
    spoiled = [d.copy() for d in data]
    for d, (cut, _) in zip(spoiled, a.splits, strict=True):
        d[cut:] = 1e3  # validation rows only
    b = fit_windowed(spoiled, mcfg, cfg)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    assert a.history.train_loss == b.history.train_loss  # training saw exactly the same windows
    assert a.history.val_loss != b.history.val_loss


@pytest.fixture(scope="module")
def trained(one_torch_thread) -> windowed.WindowFit:
    rng = np.random.default_rng(0)
    data = [_sine(400, p, rng) for p in (0.0, 1.0, 2.0)]
    cfg = WindowTrainConfig(stride=4, epochs=15, patience=4, seed=0, quantile=0.99)
    return fit_windowed(data, WindowAEConfig("gru", 2, window=24, hidden=16, latent=8), cfg)


def test_training_reduces_error_and_a_spike_exceeds_the_threshold(trained: windowed.WindowFit) -> None:
    h = trained.history
    best = min(h.val_loss)
    assert best < 0.3 * h.initial_val_loss, (h.initial_val_loss, h.val_loss)
    assert h.train_loss[-1] < h.train_loss[0]
    assert trained.threshold == pytest.approx(float(np.quantile(trained.val_errors, 0.99)))
    assert trained.channel_thresholds.shape == (2,)
    test = _sine(200, 0.5, np.random.default_rng(7))
    test[150, 0] += 6.0  # 3 std of channel 0 in raw units
    s = score_series(trained.model, test, trained.mean, trained.std, stride=4)
    hit = (s["start"] <= 150) & (s["end"] > 150)
    assert (s["score"][hit] > trained.threshold).all()
    assert np.median(s["score"][~hit]) < trained.threshold
    # the per-channel score points at the channel that spiked
    assert (s["per_channel"][hit, 0] > s["per_channel"][hit, 1]).all()


def test_checkpoint_round_trip_is_bitwise_in_a_fresh_process(trained: windowed.WindowFit, tmp_path: Path) -> None:
    ckpt = windowed.save(tmp_path / "ae", trained, features=["a", "b"], name="sine-ae")
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["model"]["kind"] == "window_autoencoder" and meta["task"] == "window_reconstruction"
    assert meta["thresholds"]["q0.99"] == pytest.approx(trained.threshold)
    model, meta2 = windowed.load(ckpt, expect_features=["a", "b"])
    assert model.config == trained.model.config
    assert WindowAEConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    values = _sine(90, 0.3, np.random.default_rng(1))
    ref = score_series(trained.model, values, trained.mean, trained.std, stride=4)
    mean, std = np.asarray(meta2["normalization"]["mean"]), np.asarray(meta2["normalization"]["std"])
    same = score_series(model, values, mean, std, stride=4)
    assert np.array_equal(ref["score"], same["score"]) and np.array_equal(ref["per_channel"], same["per_channel"])
    np.save(tmp_path / "v.npy", values)
    code = (
        "import sys, numpy as np, torch; torch.set_num_threads(1)\n"
        "from training import windowed\n"
        "m, meta = windowed.load(sys.argv[1]); n = meta['normalization']\n"
        "s = windowed.score_series(m, np.load(sys.argv[2]), np.asarray(n['mean']), np.asarray(n['std']), 4)\n"
        "np.save(sys.argv[3], s['per_channel'])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(ckpt), str(tmp_path / "v.npy"), str(tmp_path / "o.npy")],
                   check=True, cwd=Path(__file__).resolve().parents[1])
    assert np.array_equal(np.load(tmp_path / "o.npy"), ref["per_channel"])
    # the daemon's loader refuses it with a message instead of building a wrong model, and vice versa
    with pytest.raises(CheckpointError, match="unknown model config keys"):
        checkpoints.load(ckpt)
    rec = checkpoints.save(tmp_path / "rec", build_model(ModelConfig("gru", 2, hidden=4)),
                           {"features": {"numeric": ["a", "b"]}, "normalization": {"mean": [0, 0], "std": [1, 1]},
                            "horizon": 1})
    with pytest.raises(CheckpointError, match="window_autoencoder"):
        windowed.load(rec)
    with pytest.raises(CheckpointError, match="differ"):
        windowed.load(ckpt, expect_features=["b", "a"])


def test_config_validation_and_keras_initialisation() -> None:
    with pytest.raises(ConfigError):
        WindowAEConfig("rnn", 2)
    with pytest.raises(ConfigError):
        WindowAEConfig("gru", 2, decoder="attention")
    with pytest.raises(ConfigError):
        WindowAEConfig.from_dict({"family": "gru", "n_features": 2})  # no kind: a recurrent config
    old = {"family": "lstm", "n_features": 3, "hidden": 8}  # a pre-existing checkpoint's model dict
    assert ModelConfig.from_dict(old) == ModelConfig("lstm", 3, hidden=8)
    model = _model("lstm", hidden=8)
    for rnn in (model.encoder, model.decoder):
        for name, p in rnn.named_parameters():
            if name.startswith("weight_hh"):
                for g in range(4):
                    blk = p[g * 8 : (g + 1) * 8]
                    torch.testing.assert_close(blk @ blk.T, torch.eye(8), atol=1e-5, rtol=0)
            elif name.startswith("bias_ih"):
                assert (p[8:16] == 1).all() and (p[:8] == 0).all() and (p[16:] == 0).all()
            elif name.startswith("bias_hh"):
                assert (p == 0).all()
    assert {n for n, _ in model.encoder.named_parameters()} >= {"weight_hh_l0_reverse", "bias_ih_l0_reverse"}
