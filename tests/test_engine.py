"""Engine unit tests: grouping and merging of chunks, result views, categorical inputs, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamer.engine import Chunk, Engine, StreamResult
from streamer.errors import StreamerError
from streamer.models import ModelConfig, build_model
from streamer.state import StateStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


F = 2


def _engine(family="lstm", capacity=8, device="cpu", **kw) -> Engine:
    torch.manual_seed(0)
    return Engine.from_model(build_model(ModelConfig(family, F, hidden=8, **kw)), capacity=capacity, device=device)


def _chunk(stream, ts, seed=0) -> Chunk:
    rng = np.random.default_rng(seed)
    ts = np.asarray(ts, dtype=np.int64)
    return Chunk(stream, ts, rng.standard_normal((len(ts), F)).astype(np.float32))


def _forward(engine, values, categorical=None):
    with torch.no_grad():
        cat = None if categorical is None else torch.from_numpy(categorical)[None]
        out, _ = engine.model(torch.from_numpy(values)[None], categorical=cat)
    return {h: v[0].numpy() for h, v in out.items()}


def test_one_result_per_stream_in_first_appearance_order():
    """Results come one per stream, in order of first appearance, with aligned ts/inputs/outputs."""
    engine = _engine()
    chunks = [_chunk("b", [1, 2, 3], 1), _chunk("a", [5], 2), _chunk("c", [1, 2], 3)]
    res = engine.step(chunks, now=0.0)
    assert [r.stream for r in res] == ["b", "a", "c"]
    for r, c in zip(res, chunks, strict=True):
        assert isinstance(r, StreamResult)
        np.testing.assert_array_equal(r.ts, c.ts)
        np.testing.assert_array_equal(r.inputs, c.values)
        assert r.outputs["forecast"].shape == (len(c.ts), 1, F) and r.outputs["reconstruction"].shape == (len(c.ts), F)
        ref = _forward(engine, c.values)
        for h, v in ref.items():
            np.testing.assert_allclose(r.outputs[h], v, atol=1e-6)
    # the flat arrays behind the views, for vectorised consumers
    assert res.offsets.tolist() == [0, 3, 4, 6] and res.outputs["reconstruction"].shape == (6, F)
    assert engine.step([]) == []


def test_chunks_of_one_stream_are_merged_by_time_stably():
    """Several chunks of one stream in one step are merged in ts order; equal ts keep arrival order."""
    engine = _engine()
    first, second, third = _chunk("s", [10, 30], 1), _chunk("s", [20, 30, 40], 2), _chunk("t", [1], 3)
    res = engine.step([first, third, second], now=0.0)
    assert [r.stream for r in res] == ["s", "t"]
    s = res[0]
    np.testing.assert_array_equal(s.ts, [10, 20, 30, 30, 40])
    expected = np.stack([first.values[0], second.values[0], first.values[1], second.values[1], second.values[2]])
    np.testing.assert_array_equal(s.inputs, expected)
    np.testing.assert_allclose(s.outputs["forecast"], _forward(engine, expected)["forecast"], atol=1e-6)


def test_unordered_chunk_is_sorted():
    """A chunk whose own ts are out of order is put in time order before it runs."""
    engine = _engine()
    c = _chunk("s", [3, 1, 2], 1)
    r = engine.step([c, _chunk("u", [0, 1], 2)])[0]
    np.testing.assert_array_equal(r.ts, [1, 2, 3])
    np.testing.assert_array_equal(r.inputs, c.values[[1, 2, 0]])


def test_bad_chunks_raise():
    """Mismatched ts/values lengths and wrong feature counts are StreamerErrors."""
    engine = _engine()
    with pytest.raises(StreamerError, match="timestamps"):
        engine.step([Chunk("s", np.arange(3), np.zeros((2, F), np.float32))])
    with pytest.raises(StreamerError, match="values"):
        engine.step([Chunk("s", np.arange(2), np.zeros((2, F + 1), np.float32))])


def test_store_must_match_model():
    """An engine refuses a store whose shapes do not fit the model."""
    model = build_model(ModelConfig("gru", F, hidden=8))
    with pytest.raises(StreamerError, match="shapes"):
        Engine(model, StateStore({"h": (1, 9)}, 4))


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_new_streams_start_from_learned_s0(family):
    """With learn_initial_state, a new stream starts from s0 (not zeros)."""
    engine = _engine(family, learn_initial_state=True)
    with torch.no_grad():
        for p in engine.model.s0.values():
            p.normal_()
    c = _chunk("s", [1, 2, 3], 4)
    r = engine.step([c])[0]
    np.testing.assert_allclose(r.outputs["reconstruction"], _forward(engine, c.values)["reconstruction"], atol=1e-6)
    zeros = {k: torch.zeros_like(v) for k, v in engine.model.initial_state(1).items()}
    with torch.no_grad():
        out, _ = engine.model(torch.from_numpy(c.values)[None], state=zeros)
    assert not np.allclose(r.outputs["reconstruction"], out["reconstruction"][0].numpy())


def test_categorical_inputs_and_all_heads():
    """Categorical embeddings and the event/symbol heads go through the engine like through forward."""
    engine = _engine(
        "gru",
        categorical=((5, 2),),
        heads=("forecast", "reconstruction", "event", "symbol"),
        n_events=3,
        n_symbols=5,
        horizon=2,
    )
    rng = np.random.default_rng(0)
    chunks = []
    for i, n in enumerate([4, 1, 6]):
        c = _chunk(f"s{i}", np.arange(n), i)
        c.categorical = rng.integers(0, 5, (n, 1))
        chunks.append(c)
    for r, c in zip(engine.step(chunks), chunks, strict=True):
        ref = _forward(engine, c.values, c.categorical)
        assert set(r.outputs) == {"forecast", "reconstruction", "event", "symbol"}
        for h, v in ref.items():
            np.testing.assert_allclose(r.outputs[h], v, atol=1e-6)
    with pytest.raises(StreamerError, match="categorical"):
        engine.step([_chunk("x", [1])])


def test_stream_result_can_be_built_directly():
    """StreamResult is a plain value too (for detectors' tests)."""
    r = StreamResult("s", np.arange(2), {"forecast": np.zeros((2, 1, 1))}, np.zeros((2, 1), np.float32))
    assert r.stream == "s" and r.ts.tolist() == [0, 1] and "forecast" in r.outputs and r.inputs.shape == (2, 1)


NO_CUDA = not torch.cuda.is_available()


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_cuda_matches_cpu(family):
    """The engine runs unchanged on CUDA, with state resident there, and matches the CPU engine."""
    cpu, gpu = _engine(family), _engine(family, device="cuda")
    assert gpu.store.tensors["h"].device.type == "cuda"
    for step in range(3):
        chunks = [
            _chunk(f"s{i}", np.arange(step * 10, step * 10 + 1 + (i * 7 + step) % 9), i + step) for i in range(20)
        ]
        for a, b in zip(cpu.step(chunks), gpu.step(chunks), strict=True):
            for h in a.outputs:
                np.testing.assert_allclose(a.outputs[h], b.outputs[h], atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="no CUDA device")
def test_a_snapshot_taken_on_cuda_restores_on_the_cpu_and_goes_on_alike():
    """State moves between devices through the changelog format: a CUDA instance's snapshot, restored by a CPU
    instance, steps on as the CPU engine that saw the same readings."""
    gpu, cpu, fresh = _engine("gru", device="cuda"), _engine("gru"), _engine("gru")
    first = [_chunk("s", np.arange(10), 1)]
    gpu.step(first)
    cpu.step(first)
    assert fresh.store.restore(gpu.store.snapshot_one("s")) == ["s"]
    nxt = [_chunk("s", np.arange(10, 20), 2)]
    want, got = cpu.step(nxt)[0], fresh.step(nxt)[0]
    for h in want.outputs:
        np.testing.assert_allclose(want.outputs[h], got.outputs[h], atol=1e-4)


def test_step_grouped_equals_step_on_the_same_readings():
    a, b = _engine("gru", capacity=3), _engine("gru", capacity=3)  # 5 streams: parts of at most 3 streams
    rng = np.random.default_rng(5)
    for rnd in range(3):
        chunks = [Chunk(f"s{i}", np.arange(10 * rnd, 10 * rnd + n, dtype=np.int64),
                        rng.normal(size=(n, 2)).astype(np.float32))
                  for i, n in enumerate(rng.integers(1, 9, size=5))]
        want = a.step(chunks, now=float(rnd))
        offsets = np.cumsum([0] + [len(c.ts) for c in chunks])
        got = b.step_grouped([c.stream for c in chunks], offsets, np.concatenate([c.ts for c in chunks]),
                             np.concatenate([c.values for c in chunks]), now=float(rnd))
        assert got.streams == want.streams and np.array_equal(got.offsets, want.offsets)
        for head in want.outputs:
            np.testing.assert_array_equal(got.outputs[head], want.outputs[head])
    with pytest.raises(StreamerError, match="once"):
        b.step_grouped(["x", "x"], np.array([0, 1, 2]), np.arange(2), np.zeros((2, 2), np.float32))
    with pytest.raises(StreamerError, match="span"):
        b.step_grouped(["x"], np.array([0, 3]), np.arange(2), np.zeros((2, 2), np.float32))
