"""Variational recurrent dropout (Gal & Ghahramani): one mask per sequence on h_{t-1}, the same at every step.

Choice: a training-only Python cell that reads the model's own fused weights (weight_ih_l*, weight_hh_l*, biases in
torch's gate order), so the weights stay cuDNN/oneDNN compatible and serving uses the fused kernels unchanged.
DropConnect on weight_hh per batch was the alternative, but it shares one mask across all sequences of a batch.
The mask multiplies h_{t-1} where it enters the recurrent matmul (inverted dropout, scaled by 1/(1-p)); the carried
state itself is not masked, so evaluation (no dropout) runs the same function in expectation. Masks are drawn once
per call, i.e. per TBPTT chunk of a stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from streamer.models import RecurrentModel


def draw_masks(model: RecurrentModel, batch: int, p: float, keep: Tensor | None = None,
               generator: torch.Generator | None = None) -> list[Tensor]:
    """One [batch, hidden] inverted-dropout mask per layer; units where keep is False are never dropped."""
    cfg = model.config
    dev = next(model.parameters()).device
    masks = []
    for _ in range(cfg.layers):
        m = (torch.rand(batch, cfg.hidden, generator=generator) >= p).float().to(dev) / (1.0 - p)
        if keep is not None:
            m = torch.where(keep.to(dev)[None, :], m, torch.ones_like(m))
        masks.append(m)
    return masks


def _cell(family: str, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if family == "rnn":
        return torch.tanh(gi + gh), None
    if family == "gru":
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1.0 - z) * n + z * h, None
    i, f, g, o = (gi + gh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def forward_with_recurrent_dropout(
    model: RecurrentModel, x: Tensor, lengths: Tensor | None, state: dict[str, Tensor] | None,
    categorical: Tensor | None, masks: list[Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Like model.forward (padding neither advances state nor yields output) but with fixed per-row masks."""
    cfg = model.config
    b, t, _ = x.shape
    if state is None:
        state = model.initial_state(b, x.device, x.dtype)
    lens = torch.full((b,), t, device=x.device) if lengths is None else lengths.to(x.device)
    valid = (torch.arange(t, device=x.device)[None, :] < lens[:, None])  # [B, T]
    x = torch.where(valid[..., None], x, torch.zeros_like(x))  # padding (even NaN) must not reach any gradient
    if categorical is not None:
        categorical = torch.where(valid[..., None], categorical, torch.zeros_like(categorical))
    inp = model.embed(x, categorical)
    rnn = model.rnn
    new_h, new_c = [], []
    for layer in range(cfg.layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
        gi_all = F.linear(inp, w_ih, b_ih)  # [B, T, G*H]
        h = state["h"][layer]
        c = state["c"][layer] if "c" in state else None
        outs = []
        for s in range(t):
            gh = F.linear(h * masks[layer], w_hh, b_hh)
            h2, c2 = _cell(cfg.family, gi_all[:, s], gh, h, c)
            keep = valid[:, s : s + 1]
            h = torch.where(keep, h2, h)
            if c is not None:
                c = torch.where(keep, c2, c)
            outs.append(h)
        inp = torch.stack(outs, dim=1)
        if layer + 1 < cfg.layers and cfg.dropout > 0 and model.training:
            inp = F.dropout(inp, cfg.dropout, training=True)
        new_h.append(h)
        if c is not None:
            new_c.append(c)
    y = model.head_matrix(inp) * valid[..., None].to(inp.dtype)
    new_state = {"h": torch.stack(new_h)}
    if new_c:
        new_state["c"] = torch.stack(new_c)
    return model.split_heads(y), new_state
