"""A delay line inside the recurrent state: the last L readings kept in fixed units, read by a linear forecast head.

Why: a plain GRU forecasting 96 hours ahead from its state scores about 1.13 MSE on ETTh1, while a linear map of
the last L readings (DLinear/NLinear) scores about 0.38. The engine serves only the model's forward pass, so the
context window lives in the hidden state: L*F units of a standard RNN/GRU are frozen into a shift register,

    unit (k, c) at time t = tanh^(k+1)(eps * x_{t-k, c})   (k = 0..L-1 lags, c = channel),

which with eps = 1e-3 equals eps * x_{t-k, c} to within ~1e-4 relative. The remaining units are ordinary learned
recurrent units. The forecast head is a dense Linear over all units, but during training its delay block is
parameterised as NLinear (x_last + A @ (window - x_last), one A [H, L] shared by all channels) through
torch.nn.utils.parametrize; `export` bakes it into the plain weight. An event model's delay line is its linear
path: the event head's delay block is a logistic map of the last L readings (LinearEventHead), started at the
memoryless LDA of the training rows on the newest reading, beside the learned units that add what the recurrent
state knows (the model starts as the LDA and trains on from it). The checkpoint is a standard RecurrentModel:
build_model(cfg) loads it and the engine serves it unchanged.

GRU delay units: reset gate bias +30 (r = 1), update gate bias -30 (z ~ 1e-13), candidate n = tanh(W_hn h) with
W_hn the shift. RNN delay units: h' = tanh(W_hh h + W_ih x). LSTM is not supported (two tanh per step, c and h).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from streamer.errors import ConfigError
from streamer.models import RecurrentModel

EPS = 1e-3
GATE_BIAS = 30.0


class NLinearDelayHead(nn.Module):
    """Parametrisation of the forecast head weight [H*F, L*F + m]: NLinear over the delay units + dense learned part."""

    def __init__(self, horizon: int, n_features: int, context: int, learned: int, eps: float = EPS) -> None:
        super().__init__()
        self.h, self.f, self.l, self.eps = horizon, n_features, context, eps
        self.A = nn.Parameter(torch.zeros(horizon, context))
        self.W_learned = nn.Parameter(torch.zeros(horizon * n_features, learned))
        self.register_buffer("eye", torch.eye(n_features), persistent=False)

    def delay_weight(self) -> Tensor:
        """[H*F, L*F]: row h*F+c, column k*F+c' = M[h, k] * (c == c') / eps, with M the NLinear map."""
        a = self.A
        m = a.clone()
        m[:, 0] = m[:, 0] + 1.0 - a.sum(dim=1)  # lag 0 is the last reading: x_last + A @ (window - x_last)
        w = torch.einsum("hk,cd->hckd", m, self.eye)
        return w.reshape(self.h * self.f, self.l * self.f) / self.eps

    def forward(self, original: Tensor) -> Tensor:
        """The full head weight; the stored original is ignored while this parametrisation is registered."""
        return torch.cat([self.delay_weight(), self.W_learned], dim=1)


class LinearEventHead(nn.Module):
    """Parametrisation of the event head weight [1, L*F + m]: a linear map of the delay units + the learned part.

    The map is held at the readings' own scale (the weight over the delay units is W / eps), so gradient steps
    move it as fast as the learned part; the learned part is the head's own weight.
    """

    def __init__(self, weights: Tensor, eps: float = EPS) -> None:
        super().__init__()
        self.W = nn.Parameter(weights.clone())
        self.eps = eps

    def forward(self, original: Tensor) -> Tensor:
        """The full head weight: the linear map over the delay units, then the learned columns of `original`."""
        return torch.cat([self.W / self.eps, original[:, self.W.shape[1] :]], dim=1)


class DelayLine:
    """Installs and keeps a fixed delay line in the first units of a one-layer RNN/GRU RecurrentModel."""

    def __init__(self, model: RecurrentModel, context: int, eps: float = EPS) -> None:
        cfg = model.config
        if cfg.family not in ("rnn", "gru"):
            raise ConfigError(f"a context delay line needs family 'rnn' or 'gru', not {cfg.family!r}")
        if cfg.layers != 1:
            raise ConfigError("a context delay line needs layers = 1 (the heads read the top layer)")
        if cfg.categorical:
            raise ConfigError("a context delay line does not support categorical inputs")
        self.model, self.context, self.eps = model, context, eps
        self.d = context * cfg.n_features
        self.learned = cfg.hidden - self.d
        if self.learned < 0:
            raise ConfigError(f"hidden {cfg.hidden} < context {context} x {cfg.n_features} features")
        self.gates = 3 if cfg.family == "gru" else 1
        self.fixed: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (free mask, fixed values)
        self._build()
        self.restore()

    @staticmethod
    def hidden_for(context: int, n_features: int, learned: int) -> int:
        """Hidden size of a model with a delay line of `context` readings and `learned` free units."""
        return context * n_features + learned

    def _build(self) -> None:
        cfg = self.model.config
        hid, d, f, g = cfg.hidden, self.d, cfg.n_features, self.gates
        delay_rows = torch.zeros(g * hid, dtype=torch.bool)
        for k in range(g):
            delay_rows[k * hid : k * hid + d] = True
        is_delay_col = torch.zeros(hid, dtype=torch.bool)
        is_delay_col[:d] = True
        n_block = (g - 1) * hid  # the candidate (GRU n) or only (RNN) block comes last
        w_ih = torch.zeros(g * hid, cfg.input_size)
        w_ih[n_block + torch.arange(f), torch.arange(f)] = self.eps
        w_hh = torch.zeros(g * hid, hid)
        idx = torch.arange(f, d)
        w_hh[n_block + idx, idx - f] = 1.0  # lag k+1 of channel c <- lag k of channel c
        b_ih = torch.zeros(g * hid)
        if g == 3:
            b_ih[:d] = GATE_BIAS  # reset gate open
            b_ih[hid : hid + d] = -GATE_BIAS  # update gate closed: take the candidate
        free_ih = ~delay_rows[:, None].expand(-1, cfg.input_size)
        free_hh = ~(delay_rows[:, None] | is_delay_col[None, :])
        self.fixed = {
            "weight_ih_l0": (free_ih, w_ih),
            "weight_hh_l0": (free_hh, w_hh),
            "bias_ih_l0": (~delay_rows, b_ih),
            "bias_hh_l0": (~delay_rows, torch.zeros(g * hid)),
        }

    @torch.no_grad()
    def restore(self) -> None:
        """Rewrite the fixed entries (after an optimiser step, weight decay or init)."""
        for name, (free, val) in self.fixed.items():
            p = getattr(self.model.rnn, name)
            p.copy_(torch.where(free.to(p.device), p, val.to(p.device, p.dtype)))

    def mask_grads(self) -> None:
        """Zero the gradients of fixed entries (so that optimiser moments stay clean)."""
        for name, (free, _) in self.fixed.items():
            p = getattr(self.model.rnn, name)
            if p.grad is not None:
                p.grad.mul_(free.to(p.grad.device, p.grad.dtype))

    def recurrent_keep(self) -> Tensor:
        """bool [hidden]: units that recurrent dropout may drop (the learned ones)."""
        keep = torch.ones(self.model.config.hidden, dtype=torch.bool)
        keep[: self.d] = False
        return keep

    def parametrize_head(self) -> NLinearDelayHead:
        """Register the NLinear parametrisation on the forecast head weight; returns it."""
        cfg = self.model.config
        head = NLinearDelayHead(cfg.horizon, cfg.n_features, self.context, self.learned, self.eps)
        head = head.to(self.model.heads["forecast"].weight.device)
        parametrize.register_parametrization(self.model.heads["forecast"], "weight", head, unsafe=True)
        with torch.no_grad():
            self.model.heads["forecast"].bias.zero_()
        return head

    def parametrize_event_head(self, weights: Tensor, bias: float) -> LinearEventHead:
        """Register a linear path on the event head, started at `weights` [F] on the newest reading (other lags 0)."""
        head_lin = self.model.heads["event"]
        start = torch.zeros(head_lin.weight.shape[0], self.d, dtype=head_lin.weight.dtype)
        start[:, : self.model.config.n_features] = weights.to(start.dtype)
        head = LinearEventHead(start, self.eps).to(head_lin.weight.device)
        parametrize.register_parametrization(head_lin, "weight", head, unsafe=True)
        with torch.no_grad():
            head_lin.bias.fill_(float(bias))
        return head


def export(model: RecurrentModel) -> RecurrentModel:
    """Bake any parametrised head weights into plain parameters (in place); returns the model."""
    for lin in model.heads.values():
        if parametrize.is_parametrized(lin, "weight"):
            parametrize.remove_parametrizations(lin, "weight", leave_parametrized=True)
    return model
