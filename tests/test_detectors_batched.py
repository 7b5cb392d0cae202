"""Many streams in one batch, in uneven chunks, give each stream exactly what it gets alone in one pass (the
per-stream call is a batch of one), alerts and states included; the flat state moves between the two forms."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.detection import PRODUCT_PIPELINE
from streamer.detectors.batched import score_streams
from streamer.detectors.pipeline import AnomalyPipeline, PipelineConfig


def _series(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Readings with spikes, a level shift and a NaN, and imperfect forecasts of them."""
    x = rng.normal(size=(n, c)).cumsum(axis=0) * 0.1
    x[rng.integers(0, n, size=max(1, n // 40))] += rng.choice([-8.0, 8.0], size=(max(1, n // 40), c))
    x[n // 2 :] += 3.0
    if n > 10:
        x[n // 3, 0] = np.nan
    f = x + rng.normal(scale=0.05, size=(n, c))  # repeat-last: spikes and shifts surprise it
    return x.astype(np.float32), f.astype(np.float32)


def _run_per_stream(pipe: AnomalyPipeline, data: dict[str, tuple], cuts: dict[str, list[int]]) -> tuple:
    """Each stream alone, in its own chunks; the states and alerts after every round of the batched run."""
    states = {s: pipe.init_state() for s in data}
    alerts: dict[str, list] = {s: [] for s in data}
    for s, (x, f) in data.items():
        bounds = [0, *cuts[s], len(x)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            ts = np.arange(a, b, dtype=np.int64) * 1000
            alerts[s] += pipe.score(states[s], ts, x[a:b], f[a:b], stream=s)["alerts"]
    return states, alerts


# the seasonal view at a 30 s period (readings every second in these tests), the value view, the value weight
VIEWS = {"errors only": {}, "seasonal and value views": {"season_ms": 30_000, "season_max": 40, "value_short": 4},
         "short seasonal memory": {"season_ms": 30_000, "season_max": 20}, "value weight": {"value_weight": 0.5},
         "two periods with a slack": {"season_ms": 30_000, "season_also_ms": 70_000, "season_also_max": 30,
                                      "season_slack_ms": 2_000,
                                      "season_max": 90}}


@pytest.mark.parametrize("views", sorted(VIEWS))
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_equals_per_stream_bitwise(channels, views):
    rng = np.random.default_rng(channels)
    pipe = AnomalyPipeline(channels, PipelineConfig(dt_window=0, likelihood_warmup=30, error_warmup=10,
                                                    long_halflife=200.0, suppress=5, **VIEWS[views]))
    lengths = {f"s{i}": int(n) for i, n in enumerate(rng.integers(0, 400, size=12))}
    data = {s: _series(rng, n, channels) for s, n in lengths.items()}
    # rounds: each stream contributes 0..40 readings per round (many streams, uneven chunks)
    pos = dict.fromkeys(data, 0)
    cuts: dict[str, list[int]] = {s: [] for s in data}
    states = {s: pipe.init_state() for s in data}
    alerts: dict[str, list] = {s: [] for s in data}
    while any(pos[s] < lengths[s] for s in data):
        streams, xs, fs, tss, offsets = [], [], [], [], [0]
        for s in data:
            take = min(int(rng.integers(0, 40)), lengths[s] - pos[s])
            if take == 0:
                continue
            a, b = pos[s], pos[s] + take
            streams.append(s)
            xs.append(data[s][0][a:b])
            fs.append(data[s][1][a:b])
            tss.append(np.arange(a, b, dtype=np.int64) * 1000)
            offsets.append(offsets[-1] + take)
            pos[s] = b
            cuts[s].append(b)
        if not streams:
            continue
        got = score_streams(pipe, [states[s] for s in streams], streams, np.array(offsets), np.concatenate(tss),
                            np.concatenate(xs), np.concatenate(fs))
        for s, a in zip(streams, got, strict=True):
            alerts[s] += a
    for s in cuts:
        cuts[s] = [c for c in cuts[s] if c < lengths[s]]
    want_states, want_alerts = _run_per_stream(pipe, data, cuts)
    assert sum(map(len, want_alerts.values())) > 5  # the spikes did raise alerts
    assert alerts == want_alerts
    assert any("v" in states[s] for s in states)  # the batched path keeps the flat form ...
    assert {s: pipe.expand(x) for s, x in states.items()} == want_states  # ... of the same plain floats, exactly


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 120), k=st.integers(1, 6), views=st.sampled_from(sorted(VIEWS)))
def test_batched_equals_per_stream_for_any_chunking(seed, n, k, views):
    rng = np.random.default_rng(seed)
    pipe = AnomalyPipeline(1, PipelineConfig(dt_window=0, likelihood_warmup=5, error_warmup=3, short=4,
                                             **VIEWS[views]))
    x, f = _series(rng, n, 1)
    cuts = sorted(set(rng.integers(1, n, size=k).tolist())) if n > 1 else []
    st_b = pipe.init_state()
    got = []
    for a, b in zip([0, *cuts], [*cuts, n], strict=False):
        ts = np.arange(a, b, dtype=np.int64) * 1000
        got += score_streams(pipe, [st_b], ["s"], np.array([0, b - a]), ts, x[a:b], f[a:b])[0]
    want_states, want_alerts = _run_per_stream(pipe, {"s": (x, f)}, {"s": cuts})
    assert got == want_alerts["s"]
    assert pipe.expand(st_b) == want_states["s"]


def test_telemanoms_threshold_is_stepped_stream_by_stream_with_the_same_results():
    pipe = AnomalyPipeline(1, PipelineConfig(value_short=4, dt_window=100, dt_every=7, likelihood_warmup=30))
    assert pipe.dt is not None and AnomalyPipeline(1, PRODUCT_PIPELINE).dt is None  # off by default
    rng = np.random.default_rng(0)
    data = {s: _series(rng, 300, 1) for s in ("s", "t")}
    states = {s: pipe.init_state() for s in data}
    got = score_streams(pipe, [states["s"], states["t"]], ["s", "t"], np.array([0, 300, 600]),
                        np.tile(np.arange(300), 2), np.concatenate([data["s"][0], data["t"][0]]),
                        np.concatenate([data["s"][1], data["t"][1]]))
    for i, s in enumerate(data):
        alone = pipe.init_state()
        out = pipe.score(alone, np.arange(300), *data[s], stream=s)
        assert got[i] == out["alerts"]
        assert np.isfinite(out["threshold"]).any()  # the threshold ran
        assert pipe.expand(states[s]) == alone


def test_log_tail_scores_equal_the_scalar_formula_bit_for_bit() -> None:
    """The vectorised score of many z values is NAB's log scale of the normal tail, computed with libm's erfc and
    log one value at a time, exactly, edges included."""
    import math

    from streamer.detectors.columns import log_tail_scores

    def scalar(v: float) -> float:
        q = 0.5 * math.erfc(v / math.sqrt(2.0))
        return min(1.0, max(0.0, math.log(q + 1e-10) / math.log(1e-10))) if q < 1.0 else 0.0

    rng = np.random.default_rng(3)
    z = np.concatenate([rng.normal(scale=3.0, size=2000), [-40.0, -1e-300, 0.0, 1e-300, 4.2648, 6.3613, 40.0,
                                                            np.inf, -np.inf, np.nan]])
    want = np.array([scalar(v) for v in z.tolist()])
    got = log_tail_scores(z)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(got.view(np.int64), want.view(np.int64))


def _cfg() -> PipelineConfig:
    return PipelineConfig(dt_window=0, likelihood_warmup=20, error_warmup=5, long_halflife=100.0, short=4)


def test_a_state_moves_between_the_batched_and_the_per_stream_path():
    """The batched path keeps a stream's state flat; the per-stream path takes it up where it left off."""
    pipe = AnomalyPipeline(2, _cfg())
    x, f = _series(np.random.default_rng(5), 300, 2)
    cuts = [40, 41, 90, 150, 220]
    mixed = pipe.init_state()
    got = []
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, 300], strict=False)):
        ts = np.arange(a, b, dtype=np.int64) * 1000
        if i % 2 == 0:
            got += score_streams(pipe, [mixed], ["s"], np.array([0, b - a]), ts, x[a:b], f[a:b])[0]
            assert "v" in mixed and "error" not in mixed
        else:
            got += pipe.score(mixed, ts, x[a:b], f[a:b], stream="s")["alerts"]
            assert "error" in mixed and "v" not in mixed
    want_states, want_alerts = _run_per_stream(pipe, {"s": (x, f)}, {"s": cuts})
    assert got == want_alerts["s"]
    assert pipe.expand(mixed) == want_states["s"]


def test_the_flat_state_survives_json_as_snapshots_write_it():
    """A non-finite forecast is stored as NaN (no forecast) and comes back as None in the nested form."""
    from streamer.state import StateStore

    pipe = AnomalyPipeline(2, _cfg())
    x, f = _series(np.random.default_rng(6), 50, 2)
    f[-1, 1] = np.inf
    st_a = pipe.init_state()
    score_streams(pipe, [st_a], ["s"], np.array([0, 50]), np.arange(50), x, f)
    assert len(st_a["v"]) == pipe.flat_width()
    store, other = StateStore({"h": (1, 2)}, capacity=1), StateStore({"h": (1, 2)}, capacity=1)
    store.slots(["s"])
    store.set_extra("s", st_a)
    assert other.restore(store.snapshot_one("s")) == ["s"]
    back = other.get_extra("s")
    assert pipe.expand(back)["error"]["pred"][1] is None
    assert back == pipe.expand(st_a)


def test_a_state_of_another_channel_count_starts_afresh():
    """Detector state restored from an earlier model with other channels is replaced, not misread."""
    three, one = AnomalyPipeline(3, _cfg()), AnomalyPipeline(1, _cfg())
    x3, f3 = _series(np.random.default_rng(7), 60, 3)
    old = three.init_state()
    score_streams(three, [old], ["s"], np.array([0, 60]), np.arange(60), x3, f3)
    x, f = _series(np.random.default_rng(8), 60, 1)
    fresh = one.init_state()
    want = score_streams(one, [fresh], ["s"], np.array([0, 60]), np.arange(60), x, f)
    for st_old in (old, three.expand(copy.deepcopy(old))):  # flat, and nested
        st_old = copy.deepcopy(st_old)
        assert score_streams(one, [st_old], ["s"], np.array([0, 60]), np.arange(60), x, f) == want
        assert st_old == fresh


def test_state_written_without_the_value_view_keeps_its_error_view():
    """A stream's flat state from before the value view was on keeps its error view and gets a fresh value view."""
    before = AnomalyPipeline(1, _cfg())
    after = AnomalyPipeline(1, PipelineConfig(**{**_cfg().to_dict(), "value_short": 4}))
    x, f = _series(np.random.default_rng(9), 80, 1)
    st_a = before.init_state()
    score_streams(before, [st_a], ["s"], np.array([0, 80]), np.arange(80) * 1000, x, f)
    old = list(st_a["v"])
    row = after.flatten(st_a)
    assert row[: len(old)] == old and len(row) == after.flat_width()
    assert after.expand(st_a)["vlik"] == after.vlik.init_state()


def test_a_seasonal_memory_in_the_old_list_form_is_read():
    """Memories written as lists (before the compact form) give the same lookups as the compact form."""
    from streamer.detectors import SeasonalMemory
    from streamer.detectors.seasonal import decode_memory

    det = SeasonalMemory(1, period_ms=10_000, max_len=100)
    ts, x = np.arange(30, dtype=np.int64) * 1000, np.arange(30, dtype=np.float64)
    compact = det.init_state()
    det.step(compact, ts[:20], x[:20])
    mts, mx = decode_memory(compact, 1)
    listed = {"ts": mts.tolist(), "x": [[float(v)] for v in mx[:, 0]], "last": int(mts[-1])}
    np.testing.assert_array_equal(det.step(listed, ts[20:], x[20:]), det.step(compact, ts[20:], x[20:]))
    assert {k: listed[k] for k in ("ts", "x")} == compact  # rewritten in the compact form
