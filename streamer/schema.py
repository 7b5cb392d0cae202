"""Wire formats: a reading, a chunk of readings of one stream, and the records the daemon publishes.

Decoding turns bytes into arrays ready for the engine, or raises InvalidRecord with a reason label.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
from typing import Annotated, Any, NamedTuple, NotRequired

import numpy as np
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one, not typing's, before Python 3.12

from streamer.errors import InvalidRecord

StreamId = Annotated[str, Field(min_length=1, max_length=256)]
Millis = Annotated[int, Field(ge=0, lt=2**62)]  # ms since the epoch; bounded so it fits int64
SCHEMA_VERSION = 1
_F32_MAX = float(np.finfo(np.float32).max)  # "v" in a record; absent means 1
# Every reason a record is dead-lettered for, so that each one's counter is exported from the start.
DEAD_LETTER_REASONS = (
    "empty", "oversize", "invalid_json", "invalid_schema", "unknown_version", "wrong_shape",
    "named_channels_unsupported", "wrong_channels", "non_finite", "unordered_chunk", "ts_too_old", "ts_in_future",
    "key_mismatch", "duplicate_ts", "out_of_order", "undecodable",
)


# Records validate into plain dicts (TypedDicts): cheaper than model instances on the hot path.
@with_config(ConfigDict(extra="forbid"))
class Reading(TypedDict):
    """One reading: {"stream": "pump-17", "ts": 1732712345123, "values": [0.1, 3.2]} (ts in ms)."""

    v: NotRequired[int | None]
    stream: StreamId
    ts: Millis
    values: list[float] | dict[str, float]


@with_config(ConfigDict(extra="forbid"))
class ReadingChunk(TypedDict):
    """Several readings of one stream in one record: "ts" is a list and "values" a list of rows."""

    v: NotRequired[int | None]
    stream: StreamId
    ts: Annotated[list[Millis], Field(min_length=1)]
    values: list[list[float]] | list[dict[str, float]]


# pydantic-core's validators directly: TypeAdapter.validate_json adds a Python-level call per record
_INPUT = TypeAdapter(Reading | ReadingChunk).validator.validate_json
_READING = TypeAdapter(Reading).validator.validate_json
_CHUNK = TypeAdapter(ReadingChunk).validator.validate_json
_LOOKS_CHUNKED = re.compile(rb'"ts"\s*:\s*\[').search  # compact or spaced JSON alike


class Decoded:
    """A decoded input record: stream id, timestamps [T] (int64 ms) and values [T, F] (float32)."""

    __slots__ = ("stream", "ts", "values")

    def __init__(self, stream: str, ts: np.ndarray, values: np.ndarray) -> None:
        self.stream = stream
        self.ts = ts
        self.values = values


def _row(values: list[float] | dict[str, float], channels: tuple[str, ...] | None) -> list[float]:
    if isinstance(values, dict):
        if channels is None:
            raise InvalidRecord("named_channels_unsupported", "values are named but the model has no channel names")
        unknown = set(values) - set(channels)
        missing = [c for c in channels if c not in values]
        if unknown or missing:
            raise InvalidRecord(
                "wrong_channels", f"unknown channels {sorted(unknown)}, missing channels {missing}")
        return [values[c] for c in channels]
    return values


def decode(raw: bytes | None, n_features: int, channels: tuple[str, ...] | None = None,
           max_bytes: int = 1_048_576, ts_range: tuple[int, int] | None = None) -> Decoded:
    """Validate one Kafka record value and return it as arrays; InvalidRecord names what is wrong."""
    stream, ts, rows, _ = parse(raw, n_features, channels, max_bytes, ts_range)
    return Decoded(stream, np.array(ts, dtype=np.int64), np.array(rows, dtype=np.float32))


def _check_range(first: int, last: int, ts_range: tuple[int, int]) -> None:
    """Refuse a record whose timestamps leave (lowest, highest)."""
    if first < ts_range[0]:
        raise InvalidRecord("ts_too_old", f"timestamp {first} is before {ts_range[0]}")
    if last > ts_range[1]:
        raise InvalidRecord("ts_in_future", f"timestamp {last} is after {ts_range[1]}")


def parse(raw: bytes | None, n_features: int, channels: tuple[str, ...] | None = None,
          max_bytes: int = 1_048_576, ts_range: tuple[int, int] | None = None
          ) -> tuple[str, list[int], list[list[float]], bool]:
    """Validate one record value: (stream, timestamps, rows of values, whether it was a chunk record), as
    Python lists for batch assembly.

    `ts_range` (lowest, highest) refuses timestamps far in the past or future; a chunk's timestamps
    must strictly increase (the model steps readings in time order).
    """
    if raw is None:
        raise InvalidRecord("empty", "record has no value (tombstone)")
    if not raw:
        raise InvalidRecord("empty", "record value has zero length")
    if len(raw) > max_bytes:
        raise InvalidRecord("oversize", f"record of {len(raw)} bytes exceeds {max_bytes}")
    try:  # the shape the record looks like first: about half the cost of trying the union of both shapes
        msg = _CHUNK(raw) if _LOOKS_CHUNKED(raw) else _READING(raw)
    except ValidationError:
        msg = None
    try:
        if msg is None:
            msg = _INPUT(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":  # pydantic-core's parser bounds nesting, so no RecursionError here
            raise InvalidRecord("invalid_json", f"value is not JSON: {first['msg']}") from None
        where = ".".join(str(p) for p in first["loc"][1:]) or "record"
        raise InvalidRecord("invalid_schema", f"{where}: {first['msg']}") from None
    version = msg.get("v")
    if version is not None and version != SCHEMA_VERSION:
        raise InvalidRecord("unknown_version", f"schema version {version}; this streamer reads {SCHEMA_VERSION}")
    stream, ts, values = msg["stream"], msg["ts"], msg["values"]
    if type(ts) is int:  # a single reading, the common case, without the generator expressions of the chunk path
        row = values if type(values) is list else _row(values, channels)
        if len(row) != n_features:
            raise InvalidRecord("wrong_shape", f"expected {n_features} values per reading, got [{len(row)}]")
        for v in row:  # NaN fails the comparison, and so does anything that would overflow float32 to inf
            if not -_F32_MAX <= v <= _F32_MAX:
                raise InvalidRecord("non_finite", "values contain NaN or Inf (or exceed float32)")
        if ts_range is not None and not ts_range[0] <= ts <= ts_range[1]:
            _check_range(ts, ts, ts_range)
        return stream, [ts], [row], False
    return stream, ts, _chunk_rows(ts, values, n_features, channels, ts_range), True


def _chunk_rows(ts: list[int], values: list, n_features: int, channels: tuple[str, ...] | None,
                ts_range: tuple[int, int] | None) -> list[list[float]]:
    """A chunk record's rows of values, checked: shapes, finite values, increasing timestamps in range."""
    if len(ts) != len(values):
        raise InvalidRecord("wrong_shape", f"{len(ts)} timestamps but {len(values)} rows of values")
    # The checks of a chunk run in builtins over whole lists (no per-reading Python): rows are all lists or all
    # dicts (the schema's union matches the list as a whole), so only named rows need mapping.
    rows = values if type(values[0]) is list else [_row(v, channels) for v in values]
    widths = set(map(len, rows))
    if widths != {n_features}:
        raise InvalidRecord("wrong_shape", f"expected {n_features} values per reading, got {sorted(widths)}")
    flat = rows[0] if len(rows) == 1 else list(itertools.chain.from_iterable(rows))
    # NaN and inf make the sum non-finite (finite float32-sized values cannot overflow a float64 sum); then the
    # extremes bound every value
    if not (math.isfinite(sum(flat)) and -_F32_MAX <= min(flat) and max(flat) <= _F32_MAX):
        raise InvalidRecord("non_finite", "values contain NaN or Inf (or exceed float32)")
    if len(ts) > 1 and (ts != sorted(ts) or len(set(ts)) != len(ts)):
        raise InvalidRecord("unordered_chunk", "timestamps of a chunk must strictly increase")
    if ts_range is not None:
        _check_range(ts[0], ts[-1], ts_range)
    return rows


def forecasts_of(msg: dict) -> list[dict]:
    """A forecast message as one dict per reading: records with lists per field (batch or chunk) expanded."""
    if not isinstance(msg.get("ts"), list):
        return [msg]
    return [dict(msg, ts=t, n=n, forecast=f) for t, n, f in zip(msg["ts"], msg["n"], msg["forecast"], strict=True)]


def json_safe(v: Any) -> Any:
    """Plain JSON data: non-finite floats become None (JSON has no NaN), numpy scalars Python numbers."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def encode(obj: dict) -> bytes:
    """Encode an output record as compact JSON."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


DETAIL_CHARS = 1000  # longest detail kept in a dead letter (an exception message can quote the whole input)


def dead_letter(raw: bytes | None, reason: str, detail: str, topic: str, partition: int, offset: int,
                max_original: int = 65_536) -> bytes:
    """A dead-letter record: the reason, where the record came from, and its original bytes as base64, cut to
    `max_original` bytes (with the whole one's size and sha256), so that a dead letter always fits a topic."""
    original: dict[str, Any] = {"original_base64": None, "original_size": None, "original_sha256": None,
                                "original_truncated": False}
    if raw is not None:
        original = {"original_base64": base64.b64encode(raw[:max_original]).decode("ascii"),
                    "original_size": len(raw), "original_sha256": hashlib.sha256(raw).hexdigest(),
                    "original_truncated": len(raw) > max_original}
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + f"... ({len(detail)} characters)"
    return encode({"reason": reason, "detail": detail, "topic": topic, "partition": partition, "offset": offset,
                   **original})


def dead_letter_original(msg: dict) -> bytes | None:
    """The original bytes a dead letter kept (all of them unless `original_truncated`)."""
    kept = msg.get("original_base64")
    return None if kept is None else base64.b64decode(kept)


class OutRecord(NamedTuple):
    """One record to publish: topic, key (stream id), the encoded value, and the partition when known."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


_G9 = "{:.9g}".format  # 9 significant digits; mapped, a third cheaper than an f-string in a comprehension


def _pieces(first: int, stop: int, every: int, per_record: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive slices of range(first, stop, every) with at most `per_record` items each."""
    step = every * per_record
    return [(lo, min(stop, lo + step)) for lo in range(first, stop, step)]


class ForecastText:
    """The JSON text of forecasts y [N, H, F] (denormalised): of one row (`one`) or of a slice of rows (`many`).

    Numbers have 9 significant digits, all a float32 model output holds (a float32 round-trips through 9), in half
    the time of repr's 17; a diverging model's non-finite numbers become null.
    """

    def __init__(self, y: np.ndarray) -> None:
        self.n_values, self.width = y.shape[1] * y.shape[2], y.shape[2]
        self.finite = bool(np.isfinite(y).all())
        if self.finite and self.n_values == 1:  # one value per forecast: no nested lists to build
            self.texts = list(map(_G9, y.ravel().tolist()))  # a finite float in g format is valid JSON
        elif self.finite:  # only the picked readings' forecasts are formatted (forecast_every may skip most)
            self.flat = y.reshape(y.shape[0], self.n_values).tolist()
        else:
            self.rows = y.tolist()

    def one(self, j: int) -> str:
        """Row j's forecast, [[...], ...] (horizon by channel)."""
        if not self.finite:
            return json.dumps(json_safe(self.rows[j]))
        if self.n_values == 1:
            return f"[[{self.texts[j]}]]"
        texts, w = list(map(_G9, self.flat[j])), self.width
        return "[[" + "],[".join(",".join(texts[h:h + w]) for h in range(0, self.n_values, w)) + "]]"

    def many(self, sl: slice) -> str:
        """The forecasts of rows `sl`, as a list."""
        if not self.finite:
            return json.dumps(json_safe(self.rows[sl]))
        if self.n_values == 1:
            return "[[[" + "]],[[".join(self.texts[sl]) + "]]]"
        return "[" + ",".join(map(self.one, range(*sl.indices(len(self.flat))))) + "]"


class ForecastEncoder:
    """Forecast records: on the cadence (every `every`-th reading of a stream), one record per stream per batch with
    a list per field ("batch"), or mirroring the input ("input": a reading record yields one forecast record, a
    chunk record one record with a list per field). `forecasts_of` reads them back.

    Which readings get a forecast, and every forecast's content, depend only on the input, never on how polls fall
    (the numbers up to float32 rounding: torch's CPU kernels may round a row differently in calls of different
    sizes); "batch" groups them by poll (a replay after a crash may group them differently), "input" publishes the
    same records again. Records are split past `max_record_bytes`, so that one stream's batch (a chunk of 50k
    readings, say) never makes a record the topic refuses: a refused record would fail every retry of the same work.
    The text is assembled from pieces, much faster than json.dumps of a dict.
    """

    def __init__(self, model: str, version: str, every: int, by_input: bool, max_record_bytes: int) -> None:
        self.tail = f',"model":{json.dumps(model)},"version":{json.dumps(version)}}}'
        self.every, self.by_input, self.max_record_bytes = every, by_input, max_record_bytes

    def _per_record(self, text: ForecastText) -> int:
        """Forecasts per record: as many as fit `max_record_bytes` at a generous 16 bytes a number."""
        return max(1, self.max_record_bytes // (text.n_values * 16 + 48))

    @staticmethod
    def head(stream: str) -> str:
        """The start of a stream's forecast records, up to the timestamps."""
        return f'{{"stream":{json.dumps(stream)},"ts":'

    def per_stream(self, text: ForecastText, head: str, ts: list[int], lo: int, b: int, a: int,
                   seen: int) -> list[bytes]:
        """Batch records of one stream's rows [a, b) from its first row on the cadence, `lo` (`seen`: readings
        of the stream before row a)."""
        return self._list_records(text, head, ts, lo, b, a, seen, self._per_record(text))

    def _list_records(self, text: ForecastText, head: str, ts: list[int], lo: int, stop: int, a: int, seen: int,
                      per_record: int) -> list[bytes]:
        """Records with a list per field of the rows lo, lo + every, ... below `stop`, `per_record` at most each."""
        every, out = self.every, []
        for start, end in _pieces(lo, stop, every, per_record):
            ns = list(range(seen + start - a + 1, seen + end - a + 1, every))
            out.append(f'{head}{ts[start:end:every]},"n":{ns},"forecast":{text.many(slice(start, end, every))}'
                       f'{self.tail}'.encode())
        return out

    def per_input(self, text: ForecastText, head: str, ts: list[int], spans: list[tuple[int, int, bool]], a: int,
                  seen: int) -> list[bytes]:
        """Records mirroring one stream's input records, given as (first row, end row, chunk?) spans."""
        every, per_record, out = self.every, self._per_record(text), []
        for start, end, as_list in spans:
            n0 = seen + start - a  # readings of the stream before this span
            picks = range(start + (every - n0 % every) - 1, end, every)
            if not picks:
                continue
            if as_list:
                out.extend(self._list_records(text, head, ts, picks.start, picks.stop, a, seen, per_record))
            else:
                j = picks[0]
                out.append(f'{head}{ts[j]},"n":{seen + j - a + 1},"forecast":{text.one(j)}{self.tail}'.encode())
        return out
