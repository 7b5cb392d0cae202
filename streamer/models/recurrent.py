"""Shared machinery of the recurrent families: the execution plan for variable lengths and the model base."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from streamer.models.config import ModelConfig

STRATEGIES = ("segments", "packed")
SEGMENTS_MIN_ROWS = 2048


def default_strategy(device: torch.device | str | None, rows: int = 0) -> str:
    """Fastest exact layout as measured: packed on CUDA (cuDNN) and for small CPU batches, else segments.

    On a 2-core CPU, dense oneDNN calls per segment beat torch's packed CPU loop from a few thousand rows.
    """
    if torch.device(device or "cpu").type == "cuda" or rows < SEGMENTS_MIN_ROWS:
        return "packed"
    return "segments"


@dataclass
class Plan:
    """How B rows of different lengths run through one recurrent stack without padding advancing state.

    Rows are sorted by length, longest first (stable). `gather[k]` is the source row (in the caller's
    reading array) of the k-th row of the execution layout.
    - "packed": layout is torch's PackedSequence order (time-major, `batch_sizes` per step).
    - "segments": time is cut at each distinct length; segment j runs its `rows` longest rows for
      `steps` steps as one dense batch_first call, so every row's last step ends a segment exactly.
      The batch is rounded up to `padded` rows (a multiple of a quantum) with filler rows whose
      outputs and states are thrown away: oneDNN caches kernels per shape, and quantised shapes recur.
    `valid_pos` are the layout positions of real readings and `valid_src` their source rows.
    """

    strategy: str
    order: np.ndarray  # int64 [B]: sorted position -> original row
    lengths: np.ndarray  # int64 [B]: lengths in sorted order
    gather: np.ndarray  # int64 [N_layout]
    valid_pos: np.ndarray  # int64 [N]
    valid_src: np.ndarray  # int64 [N]
    segments: list[tuple[int, int, int]]  # (rows, padded rows, steps) per segment, in time order
    batch_sizes: np.ndarray | None  # packed only
    active: int  # rows with length > 0 (a prefix of the sorted order)

    @property
    def n(self) -> int:
        """Number of valid readings."""
        return int(self.valid_pos.shape[0])


def auto_quantum(active: int) -> int:
    """Row quantum for the segments layout: about 1/64 of the batch, a power of two in 1..1024."""
    return int(2 ** min(10, max(0, round(math.log2(max(active, 1) / 64)))))


def make_plan(
    lengths: np.ndarray, row_offsets: np.ndarray, strategy: str = "segments", quantum: int | None = None
) -> Plan:
    """Plan for rows of `lengths` whose step t lives at source row `row_offsets[b] + t`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    ls = lengths[order]
    offs = np.asarray(row_offsets, dtype=np.int64)[order]
    active = int(np.count_nonzero(ls))
    distinct = np.unique(ls[:active])  # ascending
    # rows alive in segment j: those with length >= distinct[j], a prefix since ls is descending
    rows = active - np.searchsorted(ls[:active][::-1], distinct, side="left")
    starts = np.concatenate(([0], distinct[:-1])).astype(np.int64)
    steps = distinct - starts
    empty = np.zeros(0, dtype=np.int64)
    if strategy == "packed":
        parts = [
            (offs[:r, None] + np.arange(s, e)[None, :]).T.ravel()
            for r, s, e in zip(rows, starts, distinct, strict=True)
        ]
        gather = np.concatenate(parts) if parts else empty
        pos = np.arange(gather.shape[0], dtype=np.int64)
        segs = [(int(r), int(r), int(k)) for r, k in zip(rows, steps, strict=True)]
        return Plan(strategy, order, ls, gather, pos, gather, segs, np.repeat(rows, steps), active)
    q = auto_quantum(active) if quantum is None else max(1, int(quantum))
    padded = -(-rows // q) * q
    # filler rows read the longest row's readings (any finite input will do: their results are discarded)
    parts, real = [], []
    for r, p, s, e in zip(rows, padded, starts, distinct, strict=True):
        offs_p = np.concatenate((offs[:r], np.full(p - r, offs[0])))
        parts.append((offs_p[:, None] + np.arange(s, e)[None, :]).ravel())
        real.append(np.repeat(np.arange(p) < r, e - s))
    gather = np.concatenate(parts) if parts else empty
    mask = np.concatenate(real) if real else np.zeros(0, dtype=bool)
    pos = np.flatnonzero(mask) if q > 1 else np.arange(gather.shape[0], dtype=np.int64)
    segs = [(int(r), int(p), int(k)) for r, p, k in zip(rows, padded, steps, strict=True)]
    return Plan(strategy, order, ls, gather, pos, gather[pos], segs, None, active)


def _glorot_(w: Tensor) -> None:
    # torch weights are [out, in]; Keras' glorot uses fan_in + fan_out of the whole kernel
    limit = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    nn.init.uniform_(w, -limit, limit)


class RecurrentModel(nn.Module):
    """Embeddings -> stacked fused RNN/LSTM/GRU -> per-step heads; state is a dict of [layers, B, hidden]."""

    state_names: tuple[str, ...] = ("h",)
    gates: int = 1
    rnn_class: type[nn.RNNBase] = nn.RNN

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in config.categorical)
        self.rnn = self._make_rnn(config)
        self.heads = nn.ModuleDict({h: nn.Linear(config.hidden, math.prod(s)) for h, s in config.head_dims().items()})
        self._head_slices: list[tuple[str, int, int, tuple[int, ...]]] = []
        start = 0
        for h, shape in config.head_dims().items():
            self._head_slices.append((h, start, start + math.prod(shape), shape))
            start += math.prod(shape)
        self.head_width = start
        if config.learn_initial_state:
            self.s0 = nn.ParameterDict(
                {n: nn.Parameter(torch.zeros(config.layers, 1, config.hidden)) for n in self.state_names}
            )
        else:
            self.s0 = None
        self.reset_parameters()

    def _make_rnn(self, config: ModelConfig) -> nn.RNNBase:
        return self.rnn_class(
            config.input_size,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )

    def reset_parameters(self) -> None:
        """Keras init: glorot-uniform input kernels, orthogonal recurrent blocks per gate, zero biases."""
        hidden = self.config.hidden
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight_ih"):
                    _glorot_(p)
                elif name.startswith("weight_hh"):
                    for g in range(self.gates):
                        nn.init.orthogonal_(p[g * hidden : (g + 1) * hidden])
                elif name.startswith("bias"):
                    p.zero_()
            self._init_biases()
            for lin in self.heads.values():
                _glorot_(lin.weight)
                lin.bias.zero_()
            for emb in self.embeddings:
                nn.init.uniform_(emb.weight, -0.05, 0.05)  # Keras' Embedding default
            if self.s0 is not None:
                for p in self.s0.values():
                    p.zero_()

    def _init_biases(self) -> None:
        """Family-specific bias tweaks (LSTM forget gate)."""

    def state_shapes(self) -> dict[str, tuple[int, int]]:
        """Shape of each state tensor per stream: name -> (layers, hidden)."""
        return {n: (self.config.layers, self.config.hidden) for n in self.state_names}

    def initial_state(self, batch: int, device=None, dtype=None) -> dict[str, Tensor]:
        """State for `batch` new streams, each [layers, batch, hidden]: zeros, or the learned s0 broadcast."""
        p = next(self.parameters())
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        layers, hidden = self.config.layers, self.config.hidden
        if self.s0 is None:
            return {n: torch.zeros(layers, batch, hidden, device=device, dtype=dtype) for n in self.state_names}
        return {n: self.s0[n].to(device=device, dtype=dtype).expand(layers, batch, hidden) for n in self.state_names}

    def embed(self, x: Tensor, categorical: Tensor | None) -> Tensor:
        """Recurrent input for readings x [..., F] and categorical codes [..., n_cat]."""
        if not self.embeddings:
            return x
        if categorical is None:
            raise ValueError(f"model expects {len(self.embeddings)} categorical inputs, got none")
        parts = [x] + [emb(categorical[..., i]) for i, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=-1)

    def fused_heads(self) -> tuple[Tensor, Tensor]:
        """Weight [head_width, hidden] and bias of all heads stacked."""
        w = torch.cat([lin.weight for lin in self.heads.values()])
        b = torch.cat([lin.bias for lin in self.heads.values()])
        return w, b

    def head_matrix(self, h: Tensor) -> Tensor:
        """All heads at once, one GEMM: [..., hidden] -> [..., head_width]."""
        return F.linear(h, *self.fused_heads())

    def split_heads(self, y: Tensor) -> dict[str, Tensor]:
        """Views of a head matrix [..., head_width] per head, shaped [..., *head shape]."""
        lead = y.shape[:-1]
        return {h: y[..., a:b].reshape(*lead, *shape) for h, a, b, shape in self._head_slices}

    def _call_rnn(
        self, x: Tensor | PackedSequence, state: list[Tensor]
    ) -> tuple[Tensor | PackedSequence, list[Tensor]]:
        hx = (state[0], state[1]) if len(state) == 2 else state[0]
        out, hn = self.rnn(x, hx)
        return out, (list(hn) if isinstance(hn, tuple) else [hn])

    def run(self, inputs: Tensor, state: dict[str, Tensor], plan: Plan) -> tuple[Tensor, dict[str, Tensor]]:
        """Run rows laid out by `plan`: inputs [N, input_size] in layout order, state in sorted row order.

        Returns the head matrix [N, head_width] in layout order and the new state in sorted row order.
        """
        names = self.state_names
        st = [state[n] for n in names]
        if plan.active == 0:
            return inputs.new_zeros(0, self.head_width), dict(state)
        act = plan.active
        w, b = self.fused_heads()
        if plan.strategy == "packed":
            bs = torch.from_numpy(plan.batch_sizes)
            hx = [s[:, :act].contiguous() for s in st]
            out, hn = self._call_rnn(PackedSequence(inputs, bs), hx)
            y = F.linear(out.data, w, b)
            done = hn
        else:
            ys, finished = [], []
            first = plan.segments[0][1]
            hx = [s[:, :first] for s in st]
            if first > hx[0].shape[1]:  # filler rows beyond the batch
                hx = [torch.cat([h, h.new_zeros(h.shape[0], first - h.shape[1], h.shape[2])], dim=1) for h in hx]
            pos = 0
            for j, (rows, padded, steps) in enumerate(plan.segments):
                n = padded * steps
                hx = [h[:, :padded] for h in hx]
                if self.config.layers > 1:
                    hx = [h.contiguous() for h in hx]
                out, hx = self._call_rnn(inputs[pos : pos + n].view(padded, steps, -1), hx)
                pos += n
                ys.append(F.linear(out.reshape(n, -1), w, b))
                nxt = plan.segments[j + 1][0] if j + 1 < len(plan.segments) else 0
                finished.append([h[:, nxt:rows] for h in hx])  # rows whose last step ended here
            y = torch.cat(ys) if len(ys) > 1 else ys[0]
            finished.reverse()  # longest rows come first in sorted order
            done = [torch.cat([f[i] for f in finished], dim=1) for i in range(len(names))]
        if act < st[0].shape[1]:  # rows of length 0 keep their state
            done = [torch.cat([d, s[:, act:]], dim=1) for d, s in zip(done, st, strict=True)]
        return y, dict(zip(names, done, strict=True))

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        state: dict[str, Tensor] | None = None,
        categorical: Tensor | None = None,
        strategy: str | None = None,
        quantum: int | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """x [B, T, F] -> (head -> [B, T, ...], state after each row's last valid step); padding gives 0."""
        b, t, f = x.shape
        if f != self.config.n_features:
            raise ValueError(f"expected {self.config.n_features} features, got {f}")
        if lengths is None:
            lens = np.full(b, t, dtype=np.int64)
        else:
            lens = lengths.detach().cpu().numpy().astype(np.int64, copy=False)
            if lens.shape != (b,) or (lens < 0).any() or (lens > t).any():
                raise ValueError(f"lengths must be [B] in 0..{t}, got {lens}")
        if state is None:
            state = self.initial_state(b, x.device, x.dtype)
        plan = make_plan(lens, np.arange(b, dtype=np.int64) * t, strategy or default_strategy(x.device, b), quantum)
        gather = torch.from_numpy(plan.gather).to(x.device)
        rows = x.reshape(b * t, f).index_select(0, gather)
        cat = None
        if categorical is not None:
            cat = categorical.reshape(b * t, -1).index_select(0, gather)
        order = torch.from_numpy(plan.order).to(x.device)
        sorted_state = {n: s.index_select(1, order) for n, s in state.items()}
        y, new_sorted = self.run(self.embed(rows, cat), sorted_state, plan)
        if plan.valid_pos.shape[0] != plan.gather.shape[0]:
            y = y.index_select(0, torch.from_numpy(plan.valid_pos).to(x.device))
        src = torch.from_numpy(plan.valid_src).to(x.device)
        full = y.new_zeros(b * t, self.head_width).index_copy(0, src, y)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(b, device=x.device)
        new_state = {n: s.index_select(1, inverse) for n, s in new_sorted.items()}
        return self.split_heads(full.view(b, t, -1)), new_state
