"""The versioned binary snapshot of streams' state (never pickle): a JSON header (the store's layout, the stream ids
and each stream's detector extras) followed by each state tensor's bytes, little-endian, [streams, layers, hidden]
per name. A state store writes one per changelog record and reads them back on restore."""

from __future__ import annotations

import json
import struct
import sys
from typing import Any

import numpy as np
import torch
from pydantic_core import to_json
from torch import Tensor

from streamer.errors import StateError

MAGIC = b"STRMSTAT"
VERSION = 1
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _json(obj: Any) -> bytes:
    """Compact JSON (NaN and Infinity as Python's json writes them): pydantic-core's encoder, much faster than
    json's on detector state full of floats, which every commit encodes for every changed stream."""
    return to_json(obj, inf_nan_mode="constants", bytes_mode="base64")


def _le_bytes(t: Tensor) -> bytes:
    """Raw little-endian bytes of a CPU tensor of any float dtype."""
    t = t.contiguous()
    if sys.byteorder == "little":
        return t.view(torch.uint8).numpy().tobytes()
    return t.view(_INT_OF_SIZE[t.element_size()]).numpy().byteswap().tobytes()


def _from_le(buf: memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """Tensor of `shape` from little-endian bytes (copied, so it owns its memory)."""
    raw = bytearray(buf)
    if not raw:
        return torch.empty(shape, dtype=dtype)
    if sys.byteorder == "little":
        return torch.frombuffer(raw, dtype=dtype).reshape(shape)
    itype = _INT_OF_SIZE[torch.empty(0, dtype=dtype).element_size()]
    swapped = torch.frombuffer(raw, dtype=itype).numpy().byteswap()
    return torch.from_numpy(swapped).view(dtype).reshape(shape)


class SnapshotCodec:
    """Encodes and decodes snapshots of one store layout (state names, their [layers, hidden] shapes, a dtype)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], dtype: torch.dtype, cache: int) -> None:
        if dtype not in _DTYPE_NAMES:
            raise StateError(f"state dtype {dtype} is not one of {sorted(_DTYPES)}")
        self.shapes, self.names, self.dtype, self.cache = shapes, tuple(shapes), dtype, cache
        self._heads: dict[str, bytes] = {}  # stream -> its header up to the extras (at most `cache` of them)

    def layout_header(self) -> dict[str, Any]:
        """The part of a snapshot's header that is the same for every snapshot of this layout."""
        return {
            "names": list(self.names),
            "dtype": _DTYPE_NAMES[self.dtype],
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "layout": "per name: [streams, layers, hidden], little-endian",
        }

    def encode(self, streams: list[str], extras: list[Any], blocks: dict[str, Tensor]) -> bytes:
        """One snapshot of the streams: their extras and state blocks (per name [streams, layers, hidden], CPU)."""
        head = _json({**self.layout_header(), "streams": streams, "extras": extras})
        body = [_le_bytes(blocks[n]) for n in self.names]
        return b"".join([_PREFIX.pack(MAGIC, VERSION, len(head)), head, *body])

    def encode_each(self, streams: list[str], extras: list[Any], blocks: dict[str, Tensor]) -> list[bytes]:
        """One snapshot per stream, byte for byte `encode([s], [extra], its block)`, the constant part of the
        header and the tensors' bytes prepared once for all of them (this runs for every changed stream at every
        commit)."""
        # per name: [streams, layers * hidden * element size] little-endian bytes, one row per stream
        rows = [np.frombuffer(_le_bytes(blocks[n].contiguous()), dtype=np.uint8).reshape(len(streams), -1)
                for n in self.names]
        # every stream's tensor bytes in one buffer (names side by side), sliced per stream below
        blob = np.concatenate(rows, axis=1).tobytes() if rows else b""
        width = len(blob) // len(streams)
        const = _json(self.layout_header())[:-1] + b',"streams":'  # without its closing brace
        dumps, pack = _json, _PREFIX.pack
        out, heads = [], self._heads
        for i, (s, e) in enumerate(zip(streams, extras, strict=True)):
            start = heads.get(s)
            if start is None:
                if len(heads) >= self.cache:
                    heads.clear()
                start = heads[s] = b"".join([const, dumps([s]), b',"extras":'])
            extra = dumps([e])
            out.append(b"".join([pack(MAGIC, VERSION, len(start) + len(extra) + 1), start, extra, b"}",
                                 blob[i * width:(i + 1) * width]]))
        return out

    def decode(self, data: bytes) -> tuple[list[str], list[Any], dict[str, Tensor]]:
        """(streams, extras, per name [streams, layers, hidden]) of a snapshot of this layout; StateError if not."""
        view = memoryview(data)
        streams, extras, pos = self._decode_header(view)
        n = len(streams)
        item = torch.empty(0, dtype=self.dtype).element_size()
        blocks = {}
        for name in self.names:
            layers, hidden = self.shapes[name]
            size = n * layers * hidden * item
            if pos + size > len(view):
                raise StateError(f"state snapshot truncated: tensor {name!r} needs {size} bytes")
            blocks[name] = _from_le(view[pos : pos + size], self.dtype, (n, layers, hidden))
            pos += size
        if pos != len(view):
            raise StateError(f"state snapshot has {len(view) - pos} trailing bytes")
        return streams, extras, blocks

    def _decode_header(self, view: memoryview) -> tuple[list[str], list[Any], int]:
        """The header's streams and extras, checked against this layout, and where the tensors' bytes start."""
        if len(view) < _PREFIX.size:
            raise StateError(f"state snapshot too short ({len(view)} bytes)")
        magic, version, hlen = _PREFIX.unpack_from(view)
        if magic != MAGIC:
            raise StateError(f"not a streamer state snapshot (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise StateError(f"state snapshot version {version} is not supported (this build reads {VERSION})")
        try:
            header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + hlen]))
            names, dtype_name = list(header["names"]), header["dtype"]
            shapes = {n: tuple(s) for n, s in header["shapes"].items()}
            streams, extras = list(header["streams"]), list(header["extras"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StateError(f"state snapshot header is malformed: {e}") from None
        if dtype_name != _DTYPE_NAMES[self.dtype]:
            raise StateError(f"state snapshot dtype {dtype_name} does not match the store's {_DTYPE_NAMES[self.dtype]}")
        if names != list(self.names) or shapes != self.shapes:
            raise StateError(
                f"state snapshot shapes {dict(zip(names, shapes.values(), strict=False))} do not match "
                f"the store's {self.shapes}"
            )
        if len(extras) != len(streams) or len(set(streams)) != len(streams):
            raise StateError("state snapshot header is malformed: streams and extras disagree")
        return streams, extras, _PREFIX.size + hlen
