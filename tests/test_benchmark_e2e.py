"""The end-to-end benchmark's own helpers (no broker)."""

from __future__ import annotations

import json

import pytest

from benchmarks.e2e import readings_in


@pytest.mark.parametrize("msg", [
    {"stream": "a", "ts": 5, "n": 1, "forecast": [[1.0]]},
    {"stream": "a", "ts": [5], "n": [1], "forecast": [[[1.0]]]},
    {"stream": "a,b]", "ts": [5, 6, 7], "n": [1, 2, 3], "forecast": [[[1.0, 2.0]], [[1.0, 2.0]], [[3.0, 4.0]]]},
    {"stream": 'x"ts":[1,2]', "ts": [5, 6], "n": 4, "forecast": [[[1.0]], [[2.0]]]},
])
def test_readings_in_counts_the_ts_entries_without_decoding(msg):
    value = json.dumps(msg, separators=(",", ":")).encode()
    assert readings_in(value) == (len(msg["ts"]) if isinstance(msg["ts"], list) else 1)
