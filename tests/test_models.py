"""Model families: config round trip, Keras initialisation, learned s0, lengths and padding semantics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from streamer.errors import ConfigError
from streamer.models import ModelConfig, build_model, make_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAMILIES = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _model(family: str, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(family, kw.pop("n_features", 3), **{"hidden": 16, **kw})).eval()


def test_config_round_trip_is_json_safe():
    """to_dict/from_dict survive JSON and keep tuples."""
    cfg = ModelConfig(
        "gru",
        4,
        hidden=32,
        layers=2,
        categorical=((10, 3), (5, 2)),
        heads=("forecast", "symbol"),
        n_symbols=7,
        learn_initial_state=True,
    )
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.categorical == ((10, 3), (5, 2))


@pytest.mark.parametrize(
    "kw",
    [
        {"family": "transformer"},
        {"hidden": 0},
        {"heads": ("forecast", "nope")},
        {"heads": ("symbol",)},
        {"dropout": 1.5},
        {"heads": ()},
    ],
)
def test_config_rejects_bad_values(kw):
    """Invalid configs raise ConfigError naming the problem."""
    with pytest.raises(ConfigError):
        ModelConfig(**{"family": "lstm", "n_features": 2, **kw})
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({"family": "lstm", "n_features": 2, "bogus": 1})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers", [1, 2])
def test_keras_initialisation(family, layers):
    """Orthogonal recurrent blocks per gate, glorot input kernels, zero biases, LSTM forget bias 1."""
    m = _model(family, layers=layers)
    h = 16
    for k in range(layers):
        w_hh = getattr(m.rnn, f"weight_hh_l{k}")
        for g in range(GATES[family]):
            block = w_hh[g * h : (g + 1) * h]
            torch.testing.assert_close(block @ block.T, torch.eye(h), atol=1e-5, rtol=0)
        w_ih = getattr(m.rnn, f"weight_ih_l{k}")
        limit = math.sqrt(6 / (w_ih.shape[0] + w_ih.shape[1]))
        assert w_ih.abs().max() <= limit and w_ih.std() > limit / 4
        b_ih, b_hh = getattr(m.rnn, f"bias_ih_l{k}"), getattr(m.rnn, f"bias_hh_l{k}")
        assert torch.all(b_hh == 0)
        if family == "lstm":
            total = b_ih + b_hh
            assert torch.all(total[h : 2 * h] == 1) and torch.all(total[:h] == 0) and torch.all(total[2 * h :] == 0)
        else:
            assert torch.all(b_ih == 0)
    for lin in m.heads.values():
        assert torch.all(lin.bias == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_shapes_and_output_heads(family):
    """state_shapes, initial_state and every head's output shape."""
    m = _model(
        family,
        layers=2,
        horizon=3,
        categorical=((6, 2),),
        heads=("forecast", "reconstruction", "event", "symbol"),
        n_events=2,
        n_symbols=6,
    )
    names = ("h", "c") if family == "lstm" else ("h",)
    assert m.state_shapes() == {n: (2, 16) for n in names}
    s0 = m.initial_state(5)
    assert set(s0) == set(names) and all(v.shape == (2, 5, 16) and torch.all(v == 0) for v in s0.values())
    x, cat = torch.randn(5, 7, 3), torch.randint(0, 6, (5, 7, 1))
    out, state = m(x, categorical=cat)
    assert out["forecast"].shape == (5, 7, 3, 3)
    assert out["reconstruction"].shape == (5, 7, 3)
    assert out["event"].shape == (5, 7, 2)
    assert out["symbol"].shape == (5, 7, 6)
    assert all(v.shape == (2, 5, 16) for v in state.values())
    with pytest.raises(ValueError):
        m(x)  # categorical inputs missing


@pytest.mark.parametrize("family", FAMILIES)
def test_learned_initial_state(family):
    """With learn_initial_state, s0 is a trained parameter broadcast to every new stream."""
    m = _model(family, layers=2, learn_initial_state=True)
    with torch.no_grad():
        for p in m.s0.values():
            p.normal_()
    s = m.initial_state(4)
    for n, v in s.items():
        assert v.shape == (2, 4, 16)
        torch.testing.assert_close(v, m.s0[n].expand(2, 4, 16))
    m.train()
    out, _ = m(torch.randn(4, 5, 3))
    out["reconstruction"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.s0.values())
    # explicit None state uses s0: equals passing initial_state explicitly
    m.eval()
    x = torch.randn(2, 3, 3)
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(x, state=m.initial_state(2))
    torch.testing.assert_close(a["reconstruction"], b["reconstruction"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["segments", "packed"])
def test_lengths_zero_keep_state_and_padding_never_advances(family, strategy):
    """Rows of length 0 keep their state; padding values change nothing; state is the last valid step's."""
    m = _model(family, layers=2)
    b, t = 5, 8
    x = torch.randn(b, t, 3)
    lengths = torch.tensor([8, 0, 3, 1, 0])
    state = {k: torch.randn_like(v) for k, v in m.initial_state(b).items()}
    with torch.no_grad():
        out, new = m(x, lengths, state, strategy=strategy)
        junk = x.clone()
        for i, n in enumerate(lengths.tolist()):
            junk[i, n:] = 1e3  # garbage in the padding
        out2, new2 = m(junk, lengths, state, strategy=strategy)
        for k in new:
            torch.testing.assert_close(new[k], new2[k])
            torch.testing.assert_close(new[k][:, 1], state[k][:, 1])
            torch.testing.assert_close(new[k][:, 4], state[k][:, 4])
        for h in out:
            for i, n in enumerate(lengths.tolist()):
                torch.testing.assert_close(out[h][i, :n], out2[h][i, :n])
                assert torch.all(out[h][i, n:] == 0)
        for i, n in enumerate(lengths.tolist()):
            if n:
                o, s = m(x[i : i + 1, :n], state={k: v[:, i : i + 1] for k, v in state.items()})
                for k in s:
                    torch.testing.assert_close(s[k], new[k][:, i : i + 1], atol=1e-6, rtol=0)
                torch.testing.assert_close(o["forecast"][0], out["forecast"][i, :n], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_look_ahead(family):
    """The output at step t does not depend on readings after t."""
    m = _model(family)
    x = torch.randn(1, 10, 3)
    y = x.clone()
    y[0, 6:] += 5
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(y)
    torch.testing.assert_close(a["forecast"][0, :6], b["forecast"][0, :6])
    assert not torch.allclose(a["forecast"][0, 6:], b["forecast"][0, 6:])


@pytest.mark.parametrize("quantum", [1, 3, 8])
def test_plans_cover_every_reading_once(quantum):
    """Both layouts gather every valid reading exactly once; filler rows only in the segments layout."""
    lengths = np.array([5, 0, 2, 7, 2, 1])
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    for strategy in ("segments", "packed"):
        p = make_plan(lengths, offsets, strategy, quantum)
        assert sorted(p.valid_src.tolist()) == list(range(lengths.sum()))
        assert p.active == 5 and list(p.lengths) == [7, 5, 2, 2, 1, 0]
    packed = make_plan(lengths, offsets, "packed")
    assert packed.batch_sizes.tolist() == [5, 4, 2, 2, 2, 1, 1]
