"""Chunk records: the whole-list checks of `schema.parse` accept and refuse exactly what a reading-by-reading
check does (hypothesis over timestamps, widths and values, NaN, infinities and float32 overflow included)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.errors import InvalidRecord
from streamer.schema import parse

F32_MAX = 3.4028234663852886e38
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-10**6, 10**6),
                   st.sampled_from([F32_MAX, -F32_MAX, F32_MAX * 1.0000001, 1e300, -1e300]))


def reference(ts: list[int], rows: list[list[float]], n_features: int) -> str | None:
    """The reason reading-by-reading checks give (None: accepted), in parse's order."""
    if any(len(r) != n_features for r in rows):
        return "wrong_shape"
    if not all(-F32_MAX <= float(v) <= F32_MAX for r in rows for v in r):
        return "non_finite"
    if any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
        return "unordered_chunk"
    return None


def encode(ts: list[int], rows: list[list[float]]) -> bytes:
    """JSON with NaN and Infinity spelled as pydantic-core's parser reads them."""
    return json.dumps({"stream": "s", "ts": ts, "values": rows}, allow_nan=True).encode()


@settings(max_examples=400, deadline=None)
@given(data=st.data(), n=st.integers(1, 40), n_features=st.integers(1, 3))
def test_chunk_checks_match_reading_by_reading_checks(data: st.DataObject, n: int, n_features: int) -> None:
    ts = data.draw(st.lists(st.integers(0, 10**12), min_size=n, max_size=n))
    if data.draw(st.booleans()):
        ts = sorted(set(ts)) or [0]
    widths = data.draw(st.lists(st.sampled_from([n_features, n_features, n_features, 0, n_features + 1]),
                                min_size=len(ts), max_size=len(ts)))
    rows = [data.draw(st.lists(VALUES, min_size=w, max_size=w)) for w in widths]
    want = reference(ts, rows, n_features)
    try:
        stream, got_ts, got_rows, is_chunk = parse(encode(ts, rows), n_features)
    except InvalidRecord as exc:
        assert exc.reason == want, exc.detail
        return
    assert want is None and is_chunk and stream == "s" and got_ts == ts
    assert [[float(v) for v in r] for r in got_rows] == [[float(v) for v in r] for r in rows]


@pytest.mark.parametrize(("values", "reason"), [
    ([[1.0], [math.nan]], "non_finite"), ([[math.inf], [1.0]], "non_finite"), ([[1.0], [-math.inf]], "non_finite"),
    ([[1e39], [1.0]], "non_finite"), ([[1.0], [1.0, 2.0]], "wrong_shape"), ([[1.0], [2.0]], None)])
def test_chunk_values_are_checked_wherever_the_bad_one_sits(values: list[list[float]], reason: str | None) -> None:
    raw = encode([1, 2], values)
    if reason is None:
        assert parse(raw, 1)[2] == values
    else:
        with pytest.raises(InvalidRecord) as exc:
            parse(raw, 1)
        assert exc.value.reason == reason


@pytest.mark.parametrize("ts", [[2, 1], [1, 1], [1, 2, 2], [1, 3, 2]])
def test_chunk_timestamps_must_strictly_increase(ts: list[int]) -> None:
    with pytest.raises(InvalidRecord) as exc:
        parse(encode(ts, [[0.0]] * len(ts)), 1)
    assert exc.value.reason == "unordered_chunk"


def test_named_rows_in_a_chunk_are_mapped_to_the_channel_order() -> None:
    raw = json.dumps({"stream": "s", "ts": [1, 2], "values": [{"b": 2.0, "a": 1.0}, {"a": 3.0, "b": 4.0}]}).encode()
    assert parse(raw, 2, ("a", "b"))[2] == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(InvalidRecord) as exc:
        parse(raw, 2, ("a", "c"))
    assert exc.value.reason == "wrong_channels"
