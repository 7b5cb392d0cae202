"""The end-to-end benchmark's own helpers (no broker)."""

from __future__ import annotations

import json
import os
import time

import pytest

from benchmarks.e2e import cpu_seconds, readings_in


@pytest.mark.parametrize("msg", [
    {"stream": "a", "ts": 5, "n": 1, "forecast": [[1.0]]},
    {"stream": "a", "ts": [5], "n": [1], "forecast": [[[1.0]]]},
    {"stream": "a,b]", "ts": [5, 6, 7], "n": [1, 2, 3], "forecast": [[[1.0, 2.0]], [[1.0, 2.0]], [[3.0, 4.0]]]},
    {"stream": 'x"ts":[1,2]', "ts": [5, 6], "n": 4, "forecast": [[[1.0]], [[2.0]]]},
])
def test_readings_in_counts_the_ts_entries_without_decoding(msg):
    value = json.dumps(msg, separators=(",", ":")).encode()
    assert readings_in(value) == (len(msg["ts"]) if isinstance(msg["ts"], list) else 1)


def test_cpu_seconds_counts_this_process_and_gives_none_where_it_cannot_read():
    before = cpu_seconds(os.getpid())
    if before is None:
        pytest.skip("no /proc here")
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU
        pass
    after = cpu_seconds(os.getpid())
    assert after is not None and after - before >= 0.2
    assert cpu_seconds(None) is None
    assert cpu_seconds(2**22 + 12345) is None  # above Linux's largest pid: no such process


def test_the_table_shows_the_daemons_time_line_in_the_latency_runs():
    from benchmarks.e2e import TIMELINE, table

    line = dict(zip(TIMELINE, (12.5, 3.25, 1.5, 20.0), strict=True))
    result = {"e2e_per_s": 1000.0, "latency": {"rate_per_s": 500.0, "timeline": line}}
    text = table(result)
    assert ("single time line at that rate (ms): poll wait 12.5 and process 3.2 a poll, hand-over 1.5 and "
            "transaction 20.0 a commit") in text
    assert "time line" not in table({"e2e_per_s": 1000.0, "latency": {"rate_per_s": 500.0}})
