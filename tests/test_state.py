"""StateStore: slots, gather/scatter, LRU and idle-TTL eviction, hard capacity, snapshot format."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from streamer.engine import Chunk, Engine
from streamer.errors import StateError
from streamer.models import ModelConfig, build_model
from streamer.state import MAGIC, VERSION, StateStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHAPES = {"h": (2, 4), "c": (2, 4)}


def _store(capacity=4, **kw) -> StateStore:
    return StateStore(SHAPES, capacity, **kw)


def _fill(store: StateStore, ids: list[str]) -> None:
    slots = store.slots(ids, now=0.0)
    n = len(ids)
    store.scatter(
        slots, {k: torch.arange(2 * n * 4, dtype=torch.float32).view(2, n, 4) + i for i, k in enumerate(SHAPES)}
    )


def test_slots_allocate_with_initial_state_and_round_trip():
    """New streams start from `initial`; scatter then gather returns what was written."""
    store = _store(initial=lambda n: {k: torch.full((2, n, 4), 7.0) for k in SHAPES})
    slots = store.slots(["a", "b"], now=0.0)
    assert len(store) == 2 and "a" in store and "z" not in store
    assert all(torch.all(v == 7) for v in store.gather(slots).values())
    new = {k: torch.randn(2, 2, 4) for k in SHAPES}
    store.scatter(slots, new)
    got = store.gather(store.slots(["b", "a"], now=1.0))
    for k in SHAPES:
        torch.testing.assert_close(got[k], new[k][:, [1, 0]])
    with pytest.raises(StateError):
        store.slots(["x", "x"], now=0.0)


def test_lru_eviction_calls_back_with_restorable_snapshots():
    """When full, the least recently used streams go first, each through on_evict with its snapshot."""
    evicted: list[tuple[str, bytes]] = []
    store = _store(capacity=3, on_evict=lambda s, b: evicted.append((s, b)))
    _fill(store, ["a", "b", "c"])
    before = store.snapshot(["a"])
    store.slots(["b"], now=1.0)
    store.slots(["c"], now=2.0)
    store.slots(["d", "e"], now=3.0)  # a (oldest), then b
    assert [s for s, _ in evicted] == ["a", "b"] and store.evictions == 2
    assert evicted[0][1] == before
    assert sorted(store.streams()) == ["c", "d", "e"]
    other = _store(capacity=3)
    assert other.restore(evicted[0][1]) == ["a"]
    assert other.snapshot(["a"]) == before


def test_idle_ttl_eviction():
    """Streams idle longer than idle_ttl are evicted by evict_idle and preferred when room is needed."""
    evicted = []
    store = _store(capacity=3, idle_ttl=10.0, on_evict=lambda s, b: evicted.append(s))
    store.slots(["a"], now=0.0)
    store.slots(["b"], now=5.0)
    store.slots(["c"], now=8.0)
    store.slots(["a"], now=9.0)  # a is now the most recent; b is the LRU victim but c is not idle
    assert store.evict_idle(now=12.0) == 0
    assert store.evict_idle(now=16.0) == 1 and evicted == ["b"]
    store.slots(["d"], now=16.5)  # free slot, nothing evicted
    store.slots(["e"], now=19.5)  # full: a (9.0) and c (8.0) are idle past 19.5 - 10, both go
    assert sorted(evicted) == ["a", "b", "c"] and sorted(store.streams()) == ["d", "e"]


def test_drop_forgets_without_callback():
    """drop() forgets streams (partition revoked) without calling on_evict."""
    store = _store(on_evict=lambda s, b: pytest.fail("callback on drop"))
    _fill(store, ["a", "b"])
    store.set_extra("a", {"z": 1})
    assert store.drop(["a", "unknown"]) == 1
    assert "a" not in store and len(store) == 1 and store.get_extra("a") is None


def test_capacity_is_a_hard_bound_with_flat_memory():
    """Stepping 10x capacity distinct streams keeps the store at capacity, storage unchanged, LRU callbacks."""
    torch.manual_seed(0)
    evicted: list[str] = []
    model = build_model(ModelConfig("lstm", 2, hidden=8))
    engine = Engine.from_model(model, capacity=50, on_evict=lambda s, b: evicted.append(s))
    ptrs = {k: (t.data_ptr(), t.numel()) for k, t in engine.store.tensors.items()}
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(500)]
    for i in range(0, 500, 25):
        chunks = [Chunk(s, np.arange(3), rng.standard_normal((3, 2)).astype(np.float32)) for s in names[i : i + 25]]
        engine.step(chunks, now=float(i))
        assert len(engine.store) <= 50
    assert len(engine.store) == 50 and engine.store.evictions == 450
    assert evicted == names[:450]  # least recently used first, in order
    assert sorted(engine.store.streams()) == sorted(names[450:])
    assert {k: (t.data_ptr(), t.numel()) for k, t in engine.store.tensors.items()} == ptrs
    assert len(engine.store.streams()) == 50  # evicted streams leave no extras behind either
    assert all(engine.store.get_extra(s) is None for s in names[:450])
    # more distinct streams in one step than the capacity: processed in groups, still bounded
    big = [Chunk(f"b{i}", np.arange(2), np.zeros((2, 2), np.float32)) for i in range(120)]
    res = engine.step(big, now=1e3)
    assert [r.stream for r in res] == [c.stream for c in big] and len(engine.store) == 50


def test_extra_for_stores_an_empty_state_once_and_refuses_strangers():
    store = _store()
    _fill(store, ["a"])
    extra = store.extra_for("a")
    assert extra == {} and store.get_extra("a") is extra
    extra["n"] = 3
    assert store.extra_for("a") is extra
    other = _store()
    other.restore(store.snapshot_one("a"))
    assert other.get_extra("a") == {"n": 3}  # changed in place, it is in the snapshot
    with pytest.raises(StateError, match="not resident"):
        store.extra_for("nope")


def test_snapshot_round_trip_with_extras():
    """snapshot/restore carry tensors and detector extras; restore overwrites resident streams."""
    store = _store()
    _fill(store, ["a", "b", "c"])
    store.set_extra("b", {"threshold": 1.5, "window": [1, 2]})
    blob = store.snapshot(["b", "a"])
    assert blob[:8] == MAGIC
    other = _store(capacity=2)
    assert other.restore(blob) == ["b", "a"]
    assert other.get_extra("b") == {"threshold": 1.5, "window": [1, 2]} and other.get_extra("a") is None
    for k in SHAPES:
        torch.testing.assert_close(other.gather(other.slots(["a", "b"]))[k], store.gather(store.slots(["a", "b"]))[k])
    assert other.snapshot(["b", "a"]) == blob
    assert store.snapshot_each(["a", "b"]) == [store.snapshot_one("a"), store.snapshot_one("b")]
    with pytest.raises(StateError):
        store.snapshot(["nope"])


def _rewrite_header(blob: bytes, **changes) -> bytes:
    magic, version, hlen = struct.unpack_from("<8sHI", blob)
    header = json.loads(blob[14 : 14 + hlen])
    header.update(changes)
    head = json.dumps(header).encode()
    return struct.pack("<8sHI", magic, version, len(head)) + head + blob[14 + hlen :]


def test_snapshot_rejects_wrong_magic_version_dtype_shape():
    """Corrupt or mismatched snapshots raise StateError with a clear message."""
    store = _store()
    _fill(store, ["a"])
    blob = store.snapshot(["a"])
    fresh = _store()
    cases = {
        "magic": b"NOTSTATE" + blob[8:],
        "version": blob[:8] + struct.pack("<H", VERSION + 1) + blob[10:],
        "dtype": _rewrite_header(blob, dtype="float64"),
        "shapes": _rewrite_header(blob, shapes={"h": [2, 5], "c": [2, 4]}),
        "truncated": blob[:-4],
        "trailing": blob + b"\0",
        "short": blob[:5],
        "header": blob[:14] + b"{" * (len(blob) - 14),
    }
    for why, bad in cases.items():
        with pytest.raises(StateError) as err:
            fresh.restore(bad)
        assert str(err.value), why
    assert "magic" in str(pytest.raises(StateError, fresh.restore, cases["magic"]).value)
    assert "version" in str(pytest.raises(StateError, fresh.restore, cases["version"]).value)
    assert "dtype" in str(pytest.raises(StateError, fresh.restore, cases["dtype"]).value)
    assert "shapes" in str(pytest.raises(StateError, fresh.restore, cases["shapes"]).value)
    other_dtype = StateStore(SHAPES, 4, dtype=torch.float64)
    with pytest.raises(StateError, match="dtype"):
        other_dtype.restore(blob)
    assert len(fresh) == 0  # nothing half-restored


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_snapshot_other_dtypes(dtype):
    """Every supported dtype round-trips bit-exactly."""
    store = StateStore(SHAPES, 3, dtype=dtype)
    slots = store.slots(["a", "b"], now=0.0)
    store.scatter(slots, {k: torch.randn(2, 2, 4).to(dtype) for k in SHAPES})
    other = StateStore(SHAPES, 3, dtype=dtype)
    other.restore(store.snapshot(["a", "b"]))
    for k in SHAPES:
        assert torch.equal(other.gather(other.slots(["a", "b"]))[k], store.gather(slots)[k])


def test_on_miss_snapshot_of_another_architecture_starts_the_stream_afresh():
    other = StateStore({"h": (1, 8)}, 4)
    other.slots(["s"], now=0.0)
    other.tensors["h"].fill_(1.0)
    blob = other.snapshot(["s"])
    store = StateStore({"h": (1, 4)}, 4, on_miss=lambda sid: blob)
    slot = store.slots(["s"], now=0.0)
    assert store.discarded == 1
    assert torch.count_nonzero(store.gather(slot)["h"]) == 0  # the initial (zero) state, not garbage
