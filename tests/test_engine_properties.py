"""Property tests: the engine over any chunking, interleaving and batch equals one pass per stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.engine import Chunk, Engine
from streamer.models import ModelConfig, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


F = 3
ATOL = 1e-5
CASES = [(f, layers) for f in ("rnn", "lstm", "gru") for layers in (1, 2)]
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_MODELS: dict[tuple[str, int], torch.nn.Module] = {}


def model_for(family: str, layers: int):
    """One small model per (family, layers), shared by all examples."""
    key = (family, layers)
    if key not in _MODELS:
        torch.manual_seed(layers)
        cfg = ModelConfig(family, F, hidden=8, layers=layers, horizon=2, learn_initial_state=True)
        m = build_model(cfg).eval()
        with torch.no_grad():
            for p in m.s0.values():
                p.normal_()  # a non-zero learned s0, so that "new stream" handling is visible
        _MODELS[key] = m
    return _MODELS[key]


@st.composite
def workloads(draw, max_streams: int = 5, max_per_step: int | None = None):
    """Streams (lengths 1..40, one longer than any chunk), chunkings, and steps made of interleaved chunks."""
    n = draw(st.integers(1, max_streams))
    lengths = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    max_chunk = draw(st.integers(1, 8))
    lengths[0] = max(lengths[0], max_chunk + 1)  # a stream longer than any chunk
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    streams = {f"s{i}": rng.standard_normal((lengths[i], F)).astype(np.float32) for i in range(n)}
    queues = {}
    for sid, values in streams.items():
        cuts, pos = [], 0
        while pos < len(values):
            k = int(rng.integers(1, max_chunk + 1))
            cuts.append((pos, min(pos + k, len(values))))
            pos += k
        queues[sid] = cuts
    # random interleaving that keeps each stream's chunks in order
    events = []
    pending = {s: list(c) for s, c in queues.items()}
    while pending:
        sid = sorted(pending)[int(rng.integers(len(pending)))]
        a, b = pending[sid].pop(0)
        events.append(Chunk(sid, np.arange(a, b, dtype=np.int64) * 10, streams[sid][a:b]))
        if not pending[sid]:
            del pending[sid]
    steps, cur = [], []
    for ev in events:
        distinct = {c.stream for c in cur} | {ev.stream}
        if cur and (rng.random() < 0.4 or (max_per_step and len(distinct) > max_per_step)):
            steps.append(cur)
            cur = []
        cur.append(ev)
    steps.append(cur)
    return streams, steps


def reference(model, streams):
    """Outputs and final state of one model.forward pass over each whole stream alone."""
    out = {}
    with torch.no_grad():
        for sid, values in streams.items():
            o, s = model(torch.from_numpy(values)[None])
            out[sid] = ({h: v[0].numpy() for h, v in o.items()}, {k: v[:, 0].numpy() for k, v in s.items()})
    return out


def run_steps(engine, steps, before_step=None):
    """Feed steps through the engine, collecting outputs per stream in time order."""
    got: dict[str, dict[str, list[np.ndarray]]] = {}
    for i, chunks in enumerate(steps):
        if before_step:
            before_step(chunks)
        for r in engine.step(chunks, now=float(i)):
            assert np.all(np.diff(r.ts) > 0)
            for h, v in r.outputs.items():
                got.setdefault(r.stream, {}).setdefault(h, []).append(v.copy())
    return {s: {h: np.concatenate(v) for h, v in d.items()} for s, d in got.items()}


def final_state(engine, sid):
    """State of one resident stream: name -> [layers, hidden]."""
    slot = engine.store.slots([sid], now=1e9)
    return {k: v[:, 0].numpy() for k, v in engine.store.gather(slot).items()}


def assert_matches(engine, got, ref):
    """Engine outputs and states equal the one-pass reference within ATOL."""
    assert set(got) == set(ref)
    for sid, (ro, rs) in ref.items():
        for h, v in ro.items():
            np.testing.assert_allclose(got[sid][h], v, atol=ATOL, rtol=0)
        for k, v in final_state(engine, sid).items():
            np.testing.assert_allclose(v, rs[k], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family,layers", CASES)
@SETTINGS
@given(
    work=workloads(), strategy=st.sampled_from([("segments", None), ("segments", 1), ("segments", 4), ("packed", None)])
)
def test_chunked_equals_one_pass(family, layers, work, strategy):
    """Any chunking / interleaving / batch composition equals one pass over each whole stream."""
    streams, steps = work
    model = model_for(family, layers)
    engine = Engine.from_model(model, capacity=16, strategy=strategy[0], quantum=strategy[1])
    got = run_steps(engine, steps)
    assert_matches(engine, got, reference(model, streams))


@pytest.mark.parametrize("family,layers", CASES)
@SETTINGS
@given(work=workloads(), extra=st.integers(1, 6), seed=st.integers(0, 1000))
def test_reordering_and_unrelated_streams_change_nothing(family, layers, work, extra, seed):
    """Shuffling chunk order within steps and adding unrelated streams leaves every stream's outputs alone."""
    streams, steps = work
    model = model_for(family, layers)
    rng = np.random.default_rng(seed)
    plain = run_steps(Engine.from_model(model, capacity=32), steps)
    mixed_steps = []
    for chunks in steps:
        noise = [
            Chunk(f"x{i}", np.arange(k, dtype=np.int64), rng.standard_normal((k, F)).astype(np.float32))
            for i in range(extra)
            for k in [int(rng.integers(1, 20))]
        ]
        mixed = list(chunks) + noise
        perm = rng.permutation(len(mixed))
        # a stream's own chunks must stay in time order only through ts, so any order is allowed
        mixed_steps.append([mixed[i] for i in perm])
    mixed = run_steps(Engine.from_model(model, capacity=32), mixed_steps)
    for sid in streams:
        for h, v in plain[sid].items():
            np.testing.assert_allclose(mixed[sid][h], v, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family,layers", CASES)
@SETTINGS
@given(work=workloads(), cut=st.floats(0.0, 1.0))
def test_snapshot_restore_continues_identically(family, layers, work, cut):
    """Snapshot all streams mid-way, restore into a fresh store: the continuation equals one pass."""
    streams, steps = work
    model = model_for(family, layers)
    k = int(round(cut * len(steps)))
    first = Engine.from_model(model, capacity=16)
    got1 = run_steps(first, steps[:k])
    blob = first.store.snapshot(first.store.streams())
    second = Engine.from_model(model, capacity=16)
    assert sorted(second.store.restore(blob)) == sorted(first.store.streams())
    got2 = run_steps(second, steps[k:])
    got = {}
    for sid in streams:
        parts = [g[sid] for g in (got1, got2) if sid in g]
        got[sid] = {h: np.concatenate([p[h] for p in parts]) for h in parts[0]}
    assert_matches(second, got, reference(model, streams))


@pytest.mark.parametrize("family,layers", CASES)
@SETTINGS
@given(work=workloads(max_streams=5, max_per_step=2))
def test_evict_then_restore_equals_never_evicting(family, layers, work):
    """With capacity 2, evicted streams' snapshots restored on return give the never-evicted result."""
    streams, steps = work
    model = model_for(family, layers)
    saved: dict[str, bytes] = {}
    engine = Engine.from_model(model, capacity=2, on_evict=lambda s, b: saved.__setitem__(s, b))

    def restore_missing(chunks):
        ids = list(dict.fromkeys(c.stream for c in chunks))
        # touch this step's resident streams first so that restoring the others cannot evict them
        engine.store.slots([s for s in ids if s in engine.store])
        for sid in ids:
            if sid not in engine.store and sid in saved:
                engine.store.restore(saved.pop(sid))

    got = run_steps(engine, steps, before_step=restore_missing)
    ref = reference(model, streams)
    for sid, (ro, rs) in ref.items():
        for h, v in ro.items():
            np.testing.assert_allclose(got[sid][h], v, atol=ATOL, rtol=0)
        if sid not in engine.store:
            engine.store.restore(saved.pop(sid))
        for name, v in final_state(engine, sid).items():
            np.testing.assert_allclose(v, rs[name], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family,layers", CASES)
@SETTINGS
@given(work=workloads(max_streams=5))
def test_on_miss_reload_equals_never_evicting(family, layers, work):
    """Capacity 2, evicted state handed back through on_miss when a stream returns: same as never evicting."""
    streams, steps = work
    model = model_for(family, layers)
    saved: dict[str, bytes] = {}
    engine = Engine.from_model(
        model, capacity=2, on_evict=lambda s, b: saved.__setitem__(s, b), on_miss=lambda s: saved.pop(s, None)
    )
    got = run_steps(engine, steps)
    ref = reference(model, streams)
    for sid, (ro, rs) in ref.items():
        for h, v in ro.items():
            np.testing.assert_allclose(got[sid][h], v, atol=ATOL, rtol=0)
        for name, v in final_state(engine, sid).items():  # slots() reloads it through on_miss if evicted
            np.testing.assert_allclose(v, rs[name], atol=ATOL, rtol=0)
