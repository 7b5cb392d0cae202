"""Per-stream recurrent state in preallocated tensors: slots, LRU / idle-TTL eviction, snapshot and restore."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streamer.errors import StateError
from streamer.snapshots import MAGIC, VERSION, SnapshotCodec

__all__ = ["MAGIC", "VERSION", "StateStore"]

_FREE = np.iinfo(np.int64).max  # LRU rank of a free slot: never chosen as a victim

log = logging.getLogger(__name__)


class StateStore:
    """Fixed-capacity store of per-stream state tensors [layers, capacity, hidden] plus detector extras.

    Memory is allocated once; a stream id maps to a slot. When full, new streams evict idle-TTL streams
    first, then the least recently used; `on_evict(stream, snapshot bytes)` is called for each.
    A new stream starts from `initial(n)` (zeros by default), or from the snapshot `on_miss(stream)`
    returns: loading returning streams there is safe, whereas restore() before a step may evict a
    stream of that same step unless the step's resident streams are touched (slots()) first.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        capacity: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        idle_ttl: float | None = None,
        on_evict: Callable[[str, bytes], None] | None = None,
        initial: Callable[[int], dict[str, Tensor]] | None = None,
        on_miss: Callable[[str], bytes | None] | None = None,
    ) -> None:
        if capacity < 1:
            raise StateError(f"state store capacity must be >= 1, got {capacity}")
        self.shapes = {n: (int(s[0]), int(s[1])) for n, s in shapes.items()}
        self.codec = SnapshotCodec(self.shapes, dtype, cache=int(capacity))
        self.names = tuple(self.shapes)
        self._capacity = int(capacity)
        self.device = torch.device(device)
        self.dtype = dtype
        self.idle_ttl = idle_ttl
        self.on_evict = on_evict
        self.initial = initial
        self.on_miss = on_miss
        self.tensors = {
            n: torch.zeros(layers, capacity, hidden, device=self.device, dtype=dtype)
            for n, (layers, hidden) in self.shapes.items()
        }
        self._index: dict[str, int] = {}
        self._ids = np.empty(capacity, dtype=object)  # slot -> stream id
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # stack; slot 0 is handed out first
        self._n_free = capacity
        self._rank = np.full(capacity, _FREE, dtype=np.int64)  # LRU order: higher = more recent
        self._clock = 0
        self._seen = np.zeros(capacity, dtype=np.float64)  # last `now` each slot was used
        self._extra: dict[str, dict[str, Any]] = {}
        self.evictions = 0
        self.discarded = 0  # on_miss snapshots that did not fit this store (their streams started afresh)

    @property
    def capacity(self) -> int:
        """Maximum number of resident streams."""
        return self._capacity

    def __len__(self) -> int:
        return self._capacity - self._n_free

    def __contains__(self, stream: object) -> bool:
        return stream in self._index

    def streams(self) -> list[str]:
        """Resident stream ids (no particular order)."""
        return list(self._index)

    def _touch(self, slots: np.ndarray, now: float) -> None:
        n = slots.shape[0]
        self._rank[slots] = np.arange(self._clock, self._clock + n, dtype=np.int64)
        self._clock += n
        self._seen[slots] = now

    def slots(self, stream_ids: list[str], now: float | None = None) -> Tensor:
        """Slot of each stream (distinct ids), allocating new ones with the initial state; marks all used."""
        return self._slots(stream_ids, now, load=True)

    def _slots(self, stream_ids: list[str], now: float | None, load: bool) -> Tensor:
        now = time.monotonic() if now is None else float(now)
        n = len(stream_ids)
        if n > self._capacity:
            raise StateError(f"{n} streams requested at once but the store holds {self._capacity}")
        found = np.fromiter(map(self._index.get, stream_ids, repeat(-1)), dtype=np.int64, count=n)
        missing = np.flatnonzero(found < 0)
        self._touch(found[found >= 0], now)
        if missing.size:
            new_ids = [stream_ids[i] for i in missing.tolist()]
            if len(set(new_ids)) != len(new_ids):
                raise StateError("stream ids passed to slots() must be distinct")
            m = missing.size
            if m > self._n_free:
                self._make_room(m - self._n_free, now)
            new = self._free[self._n_free - m : self._n_free][::-1].copy()
            self._n_free -= m
            self._index.update(zip(new_ids, new.tolist(), strict=True))
            self._ids[new] = new_ids
            self._write_initial(new)
            if load and self.on_miss is not None:
                self._load_missing(new_ids, new)
            found[missing] = new
            self._touch(new, now)
        elif len(set(stream_ids)) != n:
            raise StateError("stream ids passed to slots() must be distinct")
        return torch.from_numpy(found)

    def _load_missing(self, ids: list[str], slots: np.ndarray) -> None:
        """Fill newly allocated slots from on_miss snapshots (e.g. a stream coming back after eviction)."""
        for sid, slot in zip(ids, slots.tolist(), strict=True):
            blob = self.on_miss(sid)
            if not blob:
                continue
            try:
                streams, extras, blocks = self.codec.decode(blob)
            except StateError as exc:  # e.g. written by a model of another architecture
                self.discarded += 1
                log.warning("snapshot of %r not loaded, the stream starts afresh: %s", sid, exc)
                continue
            if sid not in streams:
                raise StateError(f"on_miss snapshot for {sid!r} holds {streams[:3]} instead")
            i = streams.index(sid)
            idx = torch.tensor([slot], device=self.device)
            for name, t in self.tensors.items():
                t.index_copy_(1, idx, blocks[name][i : i + 1].transpose(0, 1).to(self.device))
            if extras[i] is not None:
                self._extra[sid] = extras[i]

    def _write_initial(self, slots: np.ndarray) -> None:
        idx = torch.from_numpy(slots).to(self.device)
        if self.initial is None:
            for t in self.tensors.values():
                t.index_fill_(1, idx, 0.0)
            return
        init = self.initial(int(slots.shape[0]))
        for name, t in self.tensors.items():
            t.index_copy_(1, idx, init[name].detach().to(device=self.device, dtype=self.dtype))

    def _make_room(self, need: int, now: float) -> None:
        """Evict idle streams (all of them), then least recently used ones until `need` slots are free."""
        if self.idle_ttl is not None:
            need -= self.evict_idle(now)
        if need > 0:
            victims = np.argpartition(self._rank, need - 1)[:need]
            self._evict(victims[np.argsort(self._rank[victims])], callback=True)

    def evict_idle(self, now: float | None = None) -> int:
        """Evict every stream unused for longer than idle_ttl; returns how many."""
        if self.idle_ttl is None:
            return 0
        now = time.monotonic() if now is None else float(now)
        idle = np.flatnonzero((self._rank != _FREE) & (self._seen < now - self.idle_ttl))
        if idle.size:
            self._evict(idle[np.argsort(self._rank[idle])], callback=True)
        return int(idle.size)

    def _evict(self, slots: np.ndarray, callback: bool) -> None:
        ids = self._ids[slots].tolist()
        if callback and self.on_evict is not None:
            blobs = self.snapshot_each(ids)
        for s in ids:
            del self._index[s]
        self._ids[slots] = None
        self._rank[slots] = _FREE
        self._free[self._n_free : self._n_free + slots.size] = slots
        self._n_free += slots.size
        for s in ids:
            self._extra.pop(s, None)
        if callback:
            self.evictions += len(ids)
            if self.on_evict is not None:
                for s, blob in zip(ids, blobs, strict=True):
                    self.on_evict(s, blob)

    def drop(self, stream_ids: Iterable[str]) -> int:
        """Forget streams without calling on_evict (partition revoked); unknown ids are ignored."""
        slots = np.fromiter((self._index[s] for s in stream_ids if s in self._index), dtype=np.int64)
        if slots.size:
            self._evict(slots, callback=False)
        return int(slots.size)

    def clear(self) -> None:
        """Forget every stream without callbacks."""
        self.drop(list(self._index))

    def gather(self, slots: Tensor) -> dict[str, Tensor]:
        """State of the given slots: name -> [layers, n, hidden] (a copy)."""
        idx = slots.to(self.device)
        return {n: t.index_select(1, idx) for n, t in self.tensors.items()}

    def scatter(self, slots: Tensor, state: dict[str, Tensor]) -> None:
        """Write state [layers, n, hidden] per name back into distinct slots."""
        idx = slots.to(self.device)
        for n, t in self.tensors.items():
            t.index_copy_(1, idx, state[n].detach().to(device=self.device, dtype=self.dtype))

    def get_extra(self, stream: str) -> dict[str, Any] | None:
        """Opaque detector state of a resident stream (None when unset)."""
        return self._extra.get(stream)

    def extra_for(self, stream: str) -> dict[str, Any]:
        """The detector state of a resident stream to change in place; an empty one is stored on first use."""
        found = self._extra.get(stream)
        if found is None:
            if stream not in self._index:
                raise StateError(f"stream {stream!r} is not resident")
            found = self._extra[stream] = {}
        return found

    def set_extra(self, stream: str, extra: dict[str, Any] | None) -> None:
        """Set the detector state of a resident stream; it must be JSON-able, it goes into snapshots."""
        if stream not in self._index:
            raise StateError(f"stream {stream!r} is not resident")
        if extra is None:
            self._extra.pop(stream, None)
        else:
            self._extra[stream] = extra

    def _slots_of(self, stream_ids: list[str]) -> np.ndarray:
        try:
            return np.fromiter((self._index[s] for s in stream_ids), dtype=np.int64, count=len(stream_ids))
        except KeyError as e:
            raise StateError(f"stream {e.args[0]!r} is not resident") from None

    def _blocks(self, stream_ids: list[str]) -> dict[str, Tensor]:
        """The streams' state per name, [streams, layers, hidden], on the CPU (one device read per name)."""
        idx = torch.from_numpy(self._slots_of(stream_ids)).to(self.device)
        return {n: t.index_select(1, idx).transpose(0, 1).cpu() for n, t in self.tensors.items()}

    def snapshot(self, stream_ids: list[str]) -> bytes:
        """Versioned binary snapshot of the given resident streams (never pickle)."""
        stream_ids = list(stream_ids)
        return self.codec.encode(stream_ids, [self._extra.get(s) for s in stream_ids], self._blocks(stream_ids))

    def snapshot_one(self, stream: str) -> bytes:
        """Snapshot of a single stream."""
        return self.snapshot([stream])

    def snapshot_each(self, stream_ids: list[str]) -> list[bytes]:
        """One snapshot per stream (e.g. one changelog record each), byte for byte what `snapshot([s])` gives."""
        stream_ids = list(stream_ids)
        if not stream_ids:
            return []
        return self.codec.encode_each(stream_ids, [self._extra.get(s) for s in stream_ids], self._blocks(stream_ids))

    def restore(self, data: bytes, now: float | None = None) -> list[str]:
        """Load a snapshot (validated first; may evict to make room); returns the restored stream ids."""
        streams, extras, blocks = self.codec.decode(data)
        if not streams:
            return []
        slots = self._slots(streams, now, load=False)
        self.scatter(slots, {n: b.transpose(0, 1) for n, b in blocks.items()})
        for s, e in zip(streams, extras, strict=True):
            if e is None:
                self._extra.pop(s, None)
            else:
                self._extra[s] = e
        return streams

    def nbytes(self) -> int:
        """Bytes of the preallocated state tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
