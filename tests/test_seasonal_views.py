"""The seasonal views of the anomaly pipeline: a slack around one period earlier, and a coarse memory that reaches
a long period (a week) back in a few hundred readings at any sampling rate."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.detectors import AnomalyPipeline, PipelineConfig, SeasonalMemory
from streamer.detectors.seasonal import memory_length, seasonal_errors, seasonal_lookup

SECOND = 1000


def _empty() -> dict:
    return {"ts": b"", "x": b""}


def _errors(ts, x, period, slack, max_len=200, cuts=(), step=0, memory=None) -> np.ndarray:
    """seasonal_errors of one stream, in chunks cut at `cuts`."""
    memory = _empty() if memory is None else memory
    bounds = [0, *cuts, len(ts)]
    return np.concatenate([seasonal_errors([memory], np.array([0, b - a]), ts[a:b], x[a:b], period, max_len,
                                           slack, step) for a, b in zip(bounds, bounds[1:], strict=False)])


def test_without_slack_it_is_the_error_of_the_nearest_reading_one_period_earlier() -> None:
    rng = np.random.default_rng(0)
    ts = np.cumsum(rng.integers(900, 1100, 120)).astype(np.int64)
    x = rng.normal(size=(120, 2))
    want = np.abs(x - seasonal_lookup([_empty()], np.array([0, 120]), ts, x, 20 * SECOND, 200))
    np.testing.assert_array_equal(_errors(ts, x, 20 * SECOND, 0), want)


def test_a_spike_a_little_late_is_explained_within_the_slack() -> None:
    """A daily job that runs two readings later than the day before: no error within a slack of three readings,
    the whole spike without one."""
    ts = np.arange(60, dtype=np.int64) * SECOND
    x = np.zeros((60, 1))
    x[10, 0] = 5.0  # "yesterday's" spike ...
    x[42, 0] = 5.0  # ... 30 s later, two readings late
    assert _errors(ts, x, 30 * SECOND, 0)[42, 0] == 5.0
    assert _errors(ts, x, 30 * SECOND, 3 * SECOND)[42, 0] == 0.0
    assert _errors(ts, x, 30 * SECOND, 1 * SECOND)[42, 0] == 5.0  # one reading of slack is not enough


def test_a_coarse_memory_reaches_the_period_at_any_rate_in_its_readings() -> None:
    """A stream ten times faster than its memory could hold a period of: the coarse memory keeps one reading
    per slot, never more than max_len, and still finds the readings one period earlier."""
    ts = np.arange(3000, dtype=np.int64) * SECOND
    x = np.sin(np.arange(3000) * 2 * np.pi / 600)[:, None].astype(np.float32)  # a "weekly" cycle of 600 readings
    full = SeasonalMemory(1, 600 * SECOND, 60, 5 * SECOND)
    coarse = SeasonalMemory.spanning(1, 600 * SECOND, 60, 5 * SECOND)
    m_full, m_coarse = full.init_state(), coarse.init_state()
    e_full = full.errors([m_full], np.array([0, 3000]), ts, x)
    e_coarse = coarse.errors([m_coarse], np.array([0, 3000]), ts, x)
    assert np.all(np.isnan(e_full))  # 60 readings never reach 600 s back
    assert memory_length(m_coarse) <= 60 and np.isfinite(e_coarse[700:]).mean() > 0.95
    assert np.nanmax(e_coarse[700:]) < 0.06  # the kept readings within 5 s of one period earlier explain it


def test_memory_holds_the_period_and_the_slack_only() -> None:
    ts = np.arange(500, dtype=np.int64) * SECOND
    memory = _empty()
    _errors(ts, np.zeros((500, 1)), 70 * SECOND, 5 * SECOND, max_len=1000, memory=memory)
    assert 75 <= memory_length(memory) <= 77


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 149), max_size=6, unique=True), st.integers(0, 4), st.integers(0, 3),
       st.integers(0, 3))
def test_any_chunking_gives_one_pass(cuts, slack_s, step_s, seed) -> None:
    """Cut anywhere (irregular times, NaN readings, a short or coarse memory): the same errors and memory."""
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.integers(500, 1500, 150)).astype(np.int64)
    x = rng.normal(size=(150, 2))
    x[rng.integers(0, 150, 5), 0] = np.nan
    one, chunked = _empty(), _empty()
    whole = _errors(ts, x, 20 * SECOND, slack_s * SECOND, max_len=40, step=step_s * SECOND, memory=one)
    parts = _errors(ts, x, 20 * SECOND, slack_s * SECOND, max_len=40, step=step_s * SECOND, cuts=sorted(cuts),
                    memory=chunked)
    np.testing.assert_array_equal(whole, parts)
    assert one == chunked


def test_streams_together_equal_each_alone() -> None:
    rng = np.random.default_rng(2)
    ts = [np.cumsum(rng.integers(900, 1100, 90)).astype(np.int64) for _ in range(3)]
    x = [rng.normal(size=(90, 1)) for _ in range(3)]
    together, alone = [_empty() for _ in ts], [_empty() for _ in ts]
    for a, b in ((0, 40), (40, 41), (41, 90)):
        off = np.array([0, b - a, 2 * (b - a), 3 * (b - a)])
        got = seasonal_errors(together, off, np.concatenate([t[a:b] for t in ts]),
                              np.concatenate([v[a:b] for v in x]), 20 * SECOND, 70, 2 * SECOND, 3 * SECOND)
        want = np.concatenate([seasonal_errors([alone[i]], np.array([0, b - a]), ts[i][a:b], x[i][a:b],
                                               20 * SECOND, 70, 2 * SECOND, 3 * SECOND) for i in range(3)])
        np.testing.assert_array_equal(got, want)
    assert together == alone


def test_a_weekly_pattern_is_explained_by_the_second_period() -> None:
    """A pattern that repeats every 70 s, not every 10 s: the pipeline's error view with the second period sees
    (almost) no error after one such period, without it the error stays."""
    rng = np.random.default_rng(1)
    ts = np.arange(300, dtype=np.int64) * SECOND
    base = rng.normal(size=70).astype(np.float32)
    x = np.tile(base, 5)[:300, None].astype(np.float64)
    f = np.zeros_like(x)  # a model that forecasts nothing useful
    errors = {}
    for name, extra in (("one", {}), ("both", {"season_also_ms": 70 * SECOND, "season_also_max": 80})):
        pipe = AnomalyPipeline(1, PipelineConfig(dt_window=0, season_ms=10 * SECOND, season_max=20, **extra))
        errors[name] = pipe.score(pipe.init_state(), ts, x, f)["error"][:, 0]
    assert np.all(errors["both"][71:] == 0.0) and np.mean(errors["one"][71:]) > 0.5


def test_memories_read_back_from_a_snapshot_give_the_same_errors() -> None:
    """A restored stream's memory is base64 text (as a snapshot writes bytes), beside streams whose memories are
    bytes: the batch reads both, with the errors of memories never written out."""
    import base64

    rng = np.random.default_rng(5)
    ts = [np.cumsum(rng.integers(900, 1100, 60)).astype(np.int64) for _ in range(2)]
    x = [rng.normal(size=(60, 1)) for _ in range(2)]
    held = [_empty(), _empty()]
    args = (20 * SECOND, 40, 2 * SECOND, 0)
    for i in range(2):
        seasonal_errors([held[i]], np.array([0, 30]), ts[i][:30], x[i][:30], *args)
    restored = [dict(held[0]), {k: base64.urlsafe_b64encode(v).decode() for k, v in held[1].items()}]
    off = np.array([0, 30, 60])
    both = [np.concatenate([t[30:] for t in ts]), np.concatenate([v[30:] for v in x])]
    want = seasonal_errors(held, off, *both, *args)
    got = seasonal_errors(restored, off, *both, *args)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).sum() > 20
