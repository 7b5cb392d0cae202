"""Training tricks do what they claim: clipping, recurrent dropout masks, masking of padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamer.models import ModelConfig, build_model
from training.fit import Targets, TrainConfig, Trainer, masked_mean, task_loss
from training.layout import Batch, Stream
from training.recurrent_dropout import draw_masks, forward_with_recurrent_dropout

torch.set_num_threads(1)


def _model(family: str = "gru", layers: int = 1, heads=("forecast",)) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(family=family, n_features=3, hidden=10, layers=layers, horizon=2, heads=heads))


def _batch(lengths: list[int], t: int) -> Batch:
    b = len(lengths)
    tt = np.full((b, t), -1, dtype=np.int64)
    for r, n in enumerate(lengths):
        tt[r, :n] = np.arange(n)
    return Batch(np.arange(b), tt, np.array(lengths), np.ones(b, dtype=bool), tt >= 0)


def test_clipping_bounds_the_gradient_norm() -> None:
    model = _model()
    s = Stream("s", (np.random.default_rng(0).standard_normal((40, 3)) * 1e3).astype(np.float32))
    trainer = Trainer(model, TrainConfig(clip_norm=0.5))
    _, before = trainer.compute_grads(_batch([30], 30), Targets("forecast", [s], 2, torch.device("cpu")))
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert before > 10 * 0.5
    assert float(after) <= 0.5 * (1 + 1e-5)


@pytest.mark.parametrize("family", ["rnn", "gru", "lstm"])
def test_recurrent_dropout_zero_equals_serving_forward(family: str) -> None:
    model = _model(family, layers=2)
    x = torch.randn(3, 9, 3)
    lengths = torch.tensor([9, 4, 0])
    masks = draw_masks(model, 3, 0.0)
    with torch.no_grad():
        y1, s1 = forward_with_recurrent_dropout(model, x, lengths, None, None, masks)
        y2, s2 = model(x, lengths)
    torch.testing.assert_close(y1["forecast"], y2["forecast"], atol=1e-5, rtol=1e-5)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], atol=1e-5, rtol=1e-5)


def test_recurrent_dropout_mask_constant_over_time_and_differs_between_sequences() -> None:
    # h_t = tanh(1 + m * h_{t-1}) with W_hh = I: a dropped unit reads exactly tanh(1) at every step
    model = _model("rnn", heads=("reconstruction",))
    with torch.no_grad():
        model.rnn.weight_ih_l0.zero_()
        model.rnn.bias_ih_l0.fill_(1.0)
        model.rnn.bias_hh_l0.zero_()
        model.rnn.weight_hh_l0.copy_(torch.eye(10))
    b, t = 8, 12
    masks = draw_masks(model, b, 0.5, generator=torch.Generator().manual_seed(1))
    state = {"h": torch.zeros(1, b, 10)}
    with torch.no_grad():
        hs = []
        for _ in range(t):  # one step at a time through the same function, carrying state, same masks
            _, state = forward_with_recurrent_dropout(model, torch.zeros(b, 1, 3), None, state, None, masks)
            hs.append(state["h"][0])
    hs = torch.stack(hs, 1)  # [B, T, H]
    dropped = torch.isclose(hs, torch.tanh(torch.tensor(1.0)))
    assert (dropped[:, 1:] == dropped[:, 1:2]).all()  # the same units are dropped at every step
    assert torch.equal(dropped[:, 1], masks[0] == 0)
    assert len({tuple(m.tolist()) for m in masks[0] == 0}) > 1  # sequences get different masks
    keep = torch.zeros(10, dtype=torch.bool)
    keep[5:] = True
    protected = draw_masks(model, b, 0.9, keep)[0]
    assert (protected[:, :5] == 1).all()


def test_recurrent_dropout_is_used_in_training_only() -> None:
    model = _model("gru")
    trainer = Trainer(model, TrainConfig(recurrent_dropout=0.5))
    x = torch.randn(2, 6, 3)
    model.train()
    y_train, _ = trainer.forward(x, torch.tensor([6, 6]), None, None)
    model.eval()
    y_eval, _ = trainer.forward(x, torch.tensor([6, 6]), None, None)
    assert not torch.allclose(y_train["forecast"], y_eval["forecast"])
    torch.testing.assert_close(y_eval["forecast"], model(x)[0]["forecast"])


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("task", ["forecast", "event"])
def test_padding_changes_neither_loss_nor_gradients(task: str, dropout: float) -> None:
    heads = ("forecast",) if task == "forecast" else ("event",)
    lengths = torch.tensor([7, 3, 5])
    x = torch.randn(3, 7, 3)
    y = torch.randn(3, 7, 2, 3) if task == "forecast" else (torch.rand(3, 7) > 0.5).float()
    valid = torch.arange(7)[None, :] < lengths[:, None]
    results = []
    for junk in (0.0, float("nan"), 1e6):
        model = _model("lstm", layers=2, heads=heads)
        model.train()
        xp = torch.where(valid[..., None], x, torch.full_like(x, junk))
        mask_shape = valid.reshape(*valid.shape, *([1] * (y.dim() - 2)))
        yp = torch.where(mask_shape, y, torch.full_like(y, junk))
        if dropout:
            masks = draw_masks(model, 3, dropout, generator=torch.Generator().manual_seed(0))
            out, _ = forward_with_recurrent_dropout(model, xp, lengths, None, None, masks)
        else:
            out, _ = model(xp, lengths)
        loss = task_loss(task, out, yp, valid, pos_weight=2.0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        for g, g0 in zip(grads, results[0][1], strict=True):
            assert torch.equal(g, g0)


def test_masked_mean_ignores_nan_in_padding() -> None:
    err = torch.tensor([[1.0, 3.0, float("nan")]])
    assert float(masked_mean(err, torch.tensor([[True, True, False]]))) == 2.0


def test_forecast_targets_never_leave_the_split() -> None:
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    s = Stream("s", x, lo=0, hi=10)
    _, y, _, mask = Targets("forecast", [s], 2, torch.device("cpu"))(_batch([10], 10))
    assert mask[0].tolist() == [True] * 8 + [False] * 2  # t + 2 must stay below hi = 10
    assert float(y[mask].max()) == float(x[9].max())


def test_orthogonal_init_switch() -> None:
    model = _model("rnn")
    w = model.rnn.weight_hh_l0.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(10), atol=1e-5, rtol=0)
    Trainer(model, TrainConfig(orthogonal_init=False))
    w = model.rnn.weight_hh_l0.detach()
    assert not torch.allclose(w @ w.T, torch.eye(10), atol=1e-3)
