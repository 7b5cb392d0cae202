"""Windowed reconstruction: a bidirectional LSTM/GRU encoder, a latent vector, a decoder; score = masked MSE.

Why bidirectional here, and only here. The streaming models of this package (RecurrentModel) are
unidirectional: the engine carries one hidden state per stream from reading to reading, and a backward
direction has no state to carry (it would need readings that have not arrived yet). A window-level detector
works differently: it keeps the last W readings of a stream and scores a window once, after its last reading
has arrived. Inside that completed window nothing is "future" any more, so the encoder may read it both ways:
the forward direction summarises it from the first step on, the backward one from the last step back, and
their final states together describe the whole window (its start as well as its end, which a forward-only
final state would blur). The score of window k therefore depends on the readings of window k only: no row
after the end of window k is ever read (tests/test_autoencoder.py checks both properties).

Padding: a window at the end of a series may hold fewer than W readings. The encoder runs on packed
sequences (`pack_padded_sequence` with the true lengths), so padded steps are never read, whatever they
hold, and the reconstruction error is averaged over valid steps only (`masked_window_mse`).

Architecture (nanoGPT style: one config dataclass, one module):
    x [B, T<=W, F] --BiLSTM/BiGRU (packed)--> last layer's final forward and backward h [B, 2H]
    --Linear, tanh--> z [B, latent]
    decoder "rnn":    z repeated at every step into a unidirectional RNN of the same family whose initial
                      h is tanh(Linear(z)) per layer, then a Linear head per step -> [B, T, F]
    decoder "linear": one Linear(z) -> [B, W, F], cut to T steps
Initialisation as in recurrent.py (Keras): glorot-uniform input kernels and heads, orthogonal recurrent
kernels per gate block, zero biases, LSTM forget-gate bias 1 (both directions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from streamer.errors import ConfigError
from streamer.models.config import check_keys, check_sizes
from streamer.models.recurrent import _glorot_

KIND = "window_autoencoder"
AE_FAMILIES = ("lstm", "gru")
DECODERS = ("rnn", "linear")
_GATES = {"lstm": 4, "gru": 3}
_RNN = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class WindowAEConfig:
    """Architecture of a window autoencoder; `kind` tells it apart from a ModelConfig in checkpoint JSON."""

    family: str
    n_features: int
    window: int = 64
    hidden: int = 32
    latent: int = 16
    layers: int = 1
    decoder: str = "rnn"
    dropout: float = 0.0
    kind: str = KIND

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise ConfigError(f"window autoencoder config kind must be {KIND!r}, got {self.kind!r}")
        if self.family not in AE_FAMILIES:
            raise ConfigError(f"window autoencoder family {self.family!r} is not one of {AE_FAMILIES}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"window autoencoder decoder {self.decoder!r} is not one of {DECODERS}")
        check_sizes("window autoencoder", self, ("n_features", "window", "hidden", "latent", "layers"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, including `kind`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowAEConfig:
        """Inverse of to_dict; unknown keys are an error."""
        check_keys("window autoencoder", cls, d)
        if d.get("kind") != KIND:
            raise ConfigError(f"not a window autoencoder config (kind {d.get('kind')!r}, expected {KIND!r})")
        return cls(**d)


def valid_mask(lengths: Tensor, t: int) -> Tensor:
    """bool [B, t]: step s of row b is a real reading (s < lengths[b])."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def masked_window_mse(recon: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
    """Per-window, per-channel mean squared error over valid steps: [B, F]. Padding (even NaN) never counts."""
    m = valid_mask(lengths.to(x.device), x.shape[1])[..., None]
    d = torch.where(m, recon, torch.zeros_like(recon)) - torch.where(m, x, torch.zeros_like(x))
    return (d * d).sum(dim=1) / lengths.to(x.device, x.dtype).clamp(min=1)[:, None]


def masked_mse(recon: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
    """Scalar training loss: mean squared error over every valid (step, channel) of the batch."""
    m = valid_mask(lengths.to(x.device), x.shape[1])[..., None]
    d = torch.where(m, recon, torch.zeros_like(recon)) - torch.where(m, x, torch.zeros_like(x))
    return (d * d).sum() / (m.sum() * x.shape[2]).clamp(min=1)


def _init_rnn_(rnn: nn.RNNBase, hidden: int, family: str) -> None:
    """Keras init of a (possibly bidirectional, stacked) fused RNN, as RecurrentModel.reset_parameters."""
    for name, p in rnn.named_parameters():
        if name.startswith("weight_ih"):
            _glorot_(p)
        elif name.startswith("weight_hh"):
            for g in range(_GATES[family]):
                nn.init.orthogonal_(p[g * hidden : (g + 1) * hidden])
        elif name.startswith("bias"):
            p.zero_()
            if family == "lstm" and name.startswith("bias_ih"):
                p[hidden : 2 * hidden] = 1.0  # unit forget bias (b_hh's forget block stays 0)


class WindowAutoencoder(nn.Module):
    """Bidirectional recurrent encoder -> latent -> decoder; reconstructs each window over its valid steps."""

    def __init__(self, config: WindowAEConfig) -> None:
        super().__init__()
        self.config = c = config
        rnn = _RNN[c.family]
        drop = c.dropout if c.layers > 1 else 0.0
        self.encoder = rnn(c.n_features, c.hidden, num_layers=c.layers, batch_first=True, bidirectional=True,
                           dropout=drop)
        self.to_latent = nn.Linear(2 * c.hidden, c.latent)
        if c.decoder == "rnn":
            self.init_state = nn.Linear(c.latent, c.layers * c.hidden)
            self.decoder = rnn(c.latent, c.hidden, num_layers=c.layers, batch_first=True, dropout=drop)
            self.head = nn.Linear(c.hidden, c.n_features)
        else:
            self.head = nn.Linear(c.latent, c.window * c.n_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot input kernels and heads, orthogonal recurrent kernels per gate, zero biases, LSTM forget 1."""
        c = self.config
        with torch.no_grad():
            _init_rnn_(self.encoder, c.hidden, c.family)
            if c.decoder == "rnn":
                _init_rnn_(self.decoder, c.hidden, c.family)
            for lin in (m for m in self.modules() if isinstance(m, nn.Linear)):
                _glorot_(lin.weight)
                lin.bias.zero_()

    def _check(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        b, t, f = x.shape
        if f != self.config.n_features:
            raise ValueError(f"expected {self.config.n_features} features, got {f}")
        if t > self.config.window:
            raise ValueError(f"window of {t} steps is longer than the model's window {self.config.window}")
        if lengths is None:
            return torch.full((b,), t, dtype=torch.int64)
        lengths = lengths.detach().to("cpu", torch.int64)
        if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
            raise ValueError(f"lengths must be [B] in 1..{t}, got {lengths.tolist()}")
        return lengths

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(z [B, latent], final states [B, 2, hidden]: last layer's forward and backward h) of windows x [B, T, F]."""
        lens = self._check(x, lengths)
        # padding never enters the pack; zero-fill it anyway so that NaN there cannot reach any gradient
        x = torch.where(valid_mask(lens.to(x.device), x.shape[1])[..., None], x, torch.zeros_like(x))
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        _, hn = self.encoder(packed)
        h = hn[0] if isinstance(hn, tuple) else hn  # [layers * 2, B, H], in the caller's row order
        last = h.view(self.config.layers, 2, x.shape[0], self.config.hidden)[-1].transpose(0, 1)
        return torch.tanh(self.to_latent(last.reshape(x.shape[0], -1))), last

    def decode(self, z: Tensor, lengths: Tensor, t: int) -> Tensor:
        """Reconstruction [B, t, F] of windows with `lengths` from their latents; zeros on padded steps."""
        c = self.config
        b = z.shape[0]
        mask = valid_mask(lengths.to(z.device), t)[..., None]
        if c.decoder == "linear":
            y = self.head(z).view(b, c.window, c.n_features)[:, :t]
            return torch.where(mask, y, torch.zeros_like(y))
        h0 = torch.tanh(self.init_state(z)).view(b, c.layers, c.hidden).transpose(0, 1).contiguous()
        hx = (h0, torch.zeros_like(h0)) if c.family == "lstm" else h0
        inp = pack_padded_sequence(z[:, None, :].expand(b, t, c.latent), lengths.cpu(), batch_first=True,
                                   enforce_sorted=False)
        out, _ = self.decoder(inp, hx)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        y = self.head(out)
        return torch.where(mask, y, torch.zeros_like(y))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Reconstruction [B, T, F] of windows x [B, T, F] (T <= window); padded steps give 0."""
        lens = self._check(x, lengths)
        z, _ = self.encode(x, lens)
        return self.decode(z, lens, x.shape[1])

    @torch.no_grad()
    def score(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Anomaly scores of windows: (per channel [B, F], combined [B]) = mean squared error over valid steps."""
        lens = self._check(x, lengths)
        per_channel = masked_window_mse(self.forward(x, lens), x, lens)
        return per_channel, per_channel.mean(dim=1)
