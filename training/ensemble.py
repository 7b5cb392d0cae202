"""Seed ensembles served as one model: K recurrent models of one architecture merged into one K times as wide.

The merged recurrent layer holds the members side by side: the first layer's input weights are stacked (every member
reads the same readings), the recurrent weights (and deeper layers' input weights) are block-diagonal per gate, the
biases and learned initial states are concatenated. Each gate unit only ever sees its own member's units, so the
merged state is exactly the members' states side by side, and the heads average the members' outputs (for the event
head: the mean logit). The engine serves the result unchanged, with K times the state per stream.
"""

from __future__ import annotations

import torch

from streamer.errors import ConfigError
from streamer.models import RecurrentModel, build_model


def _gate_blocks(w: torch.Tensor, gates: int, hidden: int) -> list[torch.Tensor]:
    return [w[g * hidden : (g + 1) * hidden] for g in range(gates)]


@torch.no_grad()
def merge(models: list[RecurrentModel]) -> RecurrentModel:
    """One model whose outputs are the mean of the members' outputs, step for step, from any state of theirs."""
    if not models:
        raise ConfigError("an ensemble needs at least one model")
    cfg = models[0].config
    if any(m.config != cfg for m in models):
        raise ConfigError("ensemble members must share one model config")
    if cfg.categorical:
        raise ConfigError("ensembles of models with categorical inputs are not supported (embeddings differ)")
    k, h = len(models), cfg.hidden
    gates = type(models[0]).gates
    merged = build_model(type(cfg).from_dict({**cfg.to_dict(), "hidden": k * h}))
    for layer in range(cfg.layers):
        for kind in ("ih", "hh"):
            w_name, b_name = f"weight_{kind}_l{layer}", f"bias_{kind}_l{layer}"
            ws = [getattr(m.rnn, w_name) for m in models]
            out = getattr(merged.rnn, w_name)
            out.zero_()
            for g in range(gates):
                rows = slice(g * k * h, (g + 1) * k * h)
                blocks = [_gate_blocks(w, gates, h)[g] for w in ws]
                if kind == "ih" and layer == 0:
                    out[rows] = torch.cat(blocks)
                else:
                    out[rows] = torch.block_diag(*blocks)
            bias = getattr(merged.rnn, b_name)
            bs = [getattr(m.rnn, b_name) for m in models]
            bias.copy_(torch.cat([torch.cat([_gate_blocks(b, gates, h)[g] for b in bs]) for g in range(gates)]))
    for name, lin in merged.heads.items():
        lin.weight.copy_(torch.cat([m.heads[name].weight for m in models], dim=1) / k)
        lin.bias.copy_(torch.stack([m.heads[name].bias for m in models]).mean(0))
    if merged.s0 is not None:
        for n in merged.s0:
            merged.s0[n].copy_(torch.cat([m.s0[n] for m in models], dim=-1))
    return merged.eval()
