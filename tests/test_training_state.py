"""Stateful TBPTT: state carried across chunks equals one pass and the engine; the delay line is exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from streamer.models import ModelConfig, build_model
from training.delay import DelayLine, export
from training.fit import Targets, TrainConfig, Trainer
from training.layout import Lane, Stream, make_lanes, schedule

torch.set_num_threads(1)


def _model(family: str = "gru", layers: int = 2, hidden: int = 12) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(family=family, n_features=3, hidden=hidden, layers=layers, horizon=2,
                                   heads=("forecast",)))


def _streams(lengths: list[int]) -> list[Stream]:
    rng = np.random.default_rng(0)
    return [Stream(f"s{i}", rng.standard_normal((n, 3)).astype(np.float32)) for i, n in enumerate(lengths)]


def _run_layout(model, streams, lanes, rows, tbptt):
    """Run the training layout without dropout; returns {lane: state after its last chunk} and outputs per stream."""
    trainer = Trainer(model, TrainConfig(tbptt=tbptt, batch=rows))
    model.eval()
    targets = Targets("forecast", streams, 2, torch.device("cpu"))
    ends = {}
    outs = {i: np.zeros((s.x.shape[0], 2, 3), np.float32) for i, s in enumerate(streams)}
    with torch.no_grad():
        for batch in schedule(lanes, rows, tbptt):
            x, _, cat, _ = targets(batch)
            state = trainer.carry(batch)
            out, new = trainer.forward(x, torch.from_numpy(batch.lengths), state, cat)
            trainer.state = new
            for r in range(rows):
                n = int(batch.lengths[r])
                if n == 0:
                    continue
                t = batch.t[r, :n]
                outs[int(batch.stream[r])][t] = out["forecast"][r, :n].numpy()
                for lane in lanes:
                    if lane.stream == batch.stream[r] and lane.end == t[-1] + 1:
                        ends[lane] = {k: v[:, r].clone() for k, v in new.items()}
    return ends, outs


@pytest.mark.parametrize("family", ["gru", "lstm", "rnn"])
def test_chunked_state_equals_one_pass(family: str) -> None:
    model = _model(family)
    streams = _streams([53, 31, 40])
    lanes = [Lane(i, 0, 0, s.x.shape[0]) for i, s in enumerate(streams)]
    ends, outs = _run_layout(model, streams, lanes, rows=2, tbptt=7)  # 3 streams on 2 rows: one row resets
    with torch.no_grad():
        for i, s in enumerate(streams):
            y, st = model(torch.from_numpy(s.x)[None])
            for k in st:
                torch.testing.assert_close(ends[lanes[i]][k], st[k][:, 0], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(outs[i], y["forecast"][0].numpy(), atol=1e-5, rtol=1e-5)


def test_training_state_equals_engine_state() -> None:
    engine_mod = pytest.importorskip("streamer.engine")
    model = _model("lstm")
    streams = _streams([45, 29])
    lanes = [Lane(i, 0, 0, s.x.shape[0]) for i, s in enumerate(streams)]
    ends, _ = _run_layout(copy.deepcopy(model), streams, lanes, rows=2, tbptt=8)
    engine = engine_mod.Engine.from_model(copy.deepcopy(model), capacity=4)
    rng = np.random.default_rng(3)
    pos = [0, 0]
    while any(p < s.x.shape[0] for p, s in zip(pos, streams, strict=True)):  # uneven interleaved chunks
        chunks = []
        for i, s in enumerate(streams):
            n = min(int(rng.integers(1, 9)), s.x.shape[0] - pos[i])
            if n:
                chunks.append(engine_mod.Chunk(s.name, np.arange(pos[i], pos[i] + n, dtype=np.int64),
                                               s.x[pos[i] : pos[i] + n]))
                pos[i] += n
        engine.step(chunks)
    for i, s in enumerate(streams):
        state = engine.store.gather(engine.store.slots([s.name]))
        for k in state:
            torch.testing.assert_close(state[k][:, 0], ends[lanes[i]][k], atol=1e-5, rtol=1e-5)


def test_lanes_cover_every_scored_row_once_and_rows_continue() -> None:
    streams = _streams([100, 37])
    streams[0].lo, streams[0].hi = 10, 100
    rng = np.random.default_rng(0)
    lanes = make_lanes(streams, 5, washout=6, rng=rng)
    scored = {0: [], 1: []}
    for lane in lanes:
        scored[lane.stream] += list(range(lane.loss_from, lane.end))
        assert lane.loss_from - lane.start <= 6
    assert sorted(scored[0]) == list(range(10, 100))
    assert sorted(scored[1]) == list(range(6, 37))  # the cold start of a stream is never scored
    batches = schedule(lanes, 3, 5, rng)
    for prev, cur in zip(batches, batches[1:], strict=False):
        for r in range(3):
            if cur.lengths[r] and not cur.reset[r]:
                assert cur.stream[r] == prev.stream[r] and cur.t[r, 0] == prev.t[r, prev.lengths[r] - 1] + 1
                assert prev.lengths[r] == 5  # only a lane's last chunk is short


@pytest.mark.parametrize("family", ["gru", "rnn"])
def test_delay_line_holds_the_context_and_exports_exactly(family: str) -> None:
    ctx, learned = 6, 5
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, n_features=3, hidden=ctx * 3 + learned, horizon=4,
                                    heads=("forecast",)))
    delay = DelayLine(model, ctx)
    head = delay.parametrize_head()
    with torch.no_grad():
        head.A.normal_()
        head.W_learned.normal_()
    x = torch.randn(2, 30, 3) * 3
    with torch.no_grad():
        y, st = model(x)
        lags = st["h"][0][:, : ctx * 3].view(2, ctx, 3) / delay.eps
        torch.testing.assert_close(lags, torch.flip(x[:, -ctx:], dims=[1]), atol=2e-3, rtol=2e-3)
        served = export(copy.deepcopy(model))
        assert not any("parametrizations" in k for k in served.state_dict())
        fresh = build_model(served.config)
        fresh.load_state_dict(served.state_dict())
        assert torch.equal(fresh(x)[0]["forecast"], y["forecast"])


def test_delay_line_survives_optimiser_steps() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=2, hidden=4 * 2 + 3, horizon=3, heads=("forecast",)))
    delay = DelayLine(model, 4)
    delay.parametrize_head()
    before = {k: v.clone() for k, v in model.rnn.state_dict().items()}
    s = _streams([60])[0]
    s.x = s.x[:, :2].copy()
    cfg = TrainConfig(batch=2, tbptt=8, weight_decay=0.1, lr=0.05, recurrent_dropout=0.3)
    trainer = Trainer(model, cfg, delay)
    targets = Targets("forecast", [s], 3, torch.device("cpu"))
    for batch in schedule(make_lanes([s], 2, 4), 2, 8):
        trainer.step(batch, targets)
    for name, (free, fixed) in delay.fixed.items():
        now = getattr(model.rnn, name).detach()
        assert torch.equal(now[~free], fixed[~free])
        assert not torch.equal(now[free], before[name][free])  # the learned units did train
