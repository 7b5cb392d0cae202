"""Behaviour of each detector: what it flags, how it adapts (new normal), alert lifecycle and event messages."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.detectors import (
    AlertLifecycle,
    AnomalyLikelihood,
    DynamicThreshold,
    ForecastErrorScorer,
    HysteresisEvents,
    OnlineNormaliser,
    SilenceDetector,
)
from streamer.detectors.thresholds import telemanom_epsilon


def ts_of(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 1000


def test_normaliser_is_causal_zscore_and_adapts() -> None:
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(10.0, 2.0, 3000), rng.normal(50.0, 2.0, 3000)][:, None]
    d = OnlineNormaliser(1, halflife=200)
    z = d.step(d.init_state(), ts_of(len(x)), x)[:, 0]
    assert abs(np.mean(z[1000:3000])) < 0.3 and 0.7 < np.std(z[1000:3000]) < 1.3
    assert z[3000] > 5  # the shift is seen at once ...
    assert abs(np.mean(z[-500:])) < 0.5  # ... and becomes the new normal


def test_forecast_error_scores_channels_and_ignores_perfect_forecasts() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 2))
    d = ForecastErrorScorer(2, halflife=100, warmup=20)
    st = d.init_state()
    f = np.r_[x[1:], x[-1:]]  # a perfect forecast of the next reading
    out = d.step(st, ts_of(500), x, f)
    assert np.all(out["score"] == 0.0)
    f2 = f.copy()
    f2[299, 1] += 30.0  # wrong forecast for row 300 on channel 1 only
    out = d.step(d.init_state(), ts_of(500), x, f2 + rng.normal(scale=0.1, size=f2.shape))
    assert int(np.argmax(out["score"])) == 300 and out["channels"][300, 1] > 10 * max(out["channels"][300, 0], 1)


def test_likelihood_flags_a_burst_then_treats_a_lasting_level_as_normal() -> None:
    rng = np.random.default_rng(2)
    raw = np.abs(rng.normal(size=6000))
    raw[2000:2010] += 6.0  # a short burst of large errors
    raw[3000:] += 3.0  # the errors stay high from here on (a new regime)
    d = AnomalyLikelihood(short=8, halflife=300, warmup=200)
    out = d.step(d.init_state(), ts_of(len(raw)), raw)
    s = out["score"]
    assert s[:200].max() == 0.0  # warm-up
    assert s[2000:2015].max() > 0.5 and s[500:2000].max() < 0.5
    assert s[3000:3050].max() > 0.5
    assert s[-1000:].max() < 0.5  # adapted: the new level no longer alerts


def test_telemanom_threshold_flags_a_spike_and_adapts() -> None:
    rng = np.random.default_rng(3)
    e = np.abs(rng.normal(size=4000)) * 0.1
    e[1500:1510] += 3.0
    d = DynamicThreshold(window=800, span=10, every=20, warmup=200)
    out = d.step(d.init_state(), ts_of(len(e)), e)
    assert out["flag"][1500:1530].any() and not out["flag"][400:1490].any()
    assert np.isnan(out["threshold"][:199]).all() and np.isfinite(out["threshold"][300:]).all()
    buf = np.r_[np.full(990, 0.1) + rng.random(990) * 0.01, np.full(10, 5.0)]
    eps = telemanom_epsilon(buf, np.arange(2.5, 12, 0.5))
    assert 0.2 < eps < 5.0


def test_alert_fires_once_updates_and_resolves_with_deterministic_id() -> None:
    d = AlertLifecycle(on=1.0, off=0.5, resolve_after=3, update_every=4, critical=2.0, top_k=2,
                       channel_names=["temp", "rpm", "volt"], model="gru-h32", version="7")
    s = np.r_[np.zeros(5), [1.2, 1.5, 0.8, 2.5, 0.9, 0.2, 0.1, 0.1, 0.0], np.zeros(5)]
    ch = np.zeros((len(s), 3))
    ch[:, 2], ch[:, 0] = s, s / 2
    ch[8] = [0.1, 3.0, 0.2]
    st = d.init_state()
    msgs = d.step(st, ts_of(len(s)) + 10_000, s, ch, stream="pump-1")
    states = [m["state"] for m in msgs]
    assert states[0] == "firing" and states.count("firing") == 1 and states[-1] == "resolved"
    assert "updated" in states  # severity rose to critical at row 8
    assert {m["id"] for m in msgs} == {"pump-1:anomaly:15000"}
    last = msgs[-1]
    assert last["severity"] == "critical" and last["peak"] == 2.5 and last["channels"] == ["rpm", "volt"]
    assert last["end_ts"] == 22_000 and last["model"] == "gru-h32" and last["version"] == "7"
    assert msgs[0]["channels"] == ["volt", "temp"]
    again = d.step(AlertLifecycle().init_state(), ts_of(len(s)) + 10_000, s, ch, stream="pump-1")
    assert [m["id"] for m in again][0] == msgs[0]["id"]


def test_alert_resolves_after_max_open_as_new_normal() -> None:
    d = AlertLifecycle(on=1.0, resolve_after=3, update_every=1000, max_open=50)
    msgs = d.step(d.init_state(), ts_of(200), np.full(200, 5.0), stream="s")
    assert [m["state"] for m in msgs][:2] == ["firing", "resolved"]


def test_hysteresis_events_need_min_duration_and_report_onset_offset() -> None:
    d = HysteresisEvents(on=0.7, off=0.3, min_on=3, min_off=2)
    p = np.array([0.1, 0.8, 0.9, 0.1, 0.8, 0.9, 0.95, 0.5, 0.6, 0.2, 0.5, 0.1, 0.1, 0.0])
    st = d.init_state()
    ev = d.step(st, ts_of(7), p[:7], stream="room") + d.step(st, ts_of(len(p))[7:], p[7:], stream="room")
    assert [e["type"] for e in ev] == ["onset", "offset"]
    on, off = ev
    assert on["start"] == 4000 and on["ts"] == 6000  # the flicker at rows 1-2 was too short
    assert off["start"] == 4000 and off["end"] == 11_000 and 0.3 < off["confidence"] < 1.0


def test_hysteresis_rejects_off_above_on() -> None:
    with pytest.raises(ValueError):
        HysteresisEvents(on=0.3, off=0.6)


def test_silence_reported_once_and_resumed() -> None:
    d = SilenceDetector(timeout_ms=60_000)
    st = d.init_state()
    assert d.check(st, 10**9) == []  # never seen: nothing to report
    d.step(st, np.array([1000, 2000]))
    assert d.check(st, 61_999) == []
    first = d.check(st, 62_000, stream="s")
    assert len(first) == 1 and first[0]["type"] == "onset" and first[0]["start"] == 2000
    assert d.check(st, 90_000) == []  # once
    back = d.step(st, np.array([95_000]), stream="s")
    assert back[0]["type"] == "offset" and back[0]["end"] == 95_000


def test_seasonal_memory_returns_the_reading_one_period_earlier() -> None:
    from streamer.detectors import SeasonalMemory
    from streamer.detectors.seasonal import memory_length

    det = SeasonalMemory(1, period_ms=10_000, max_len=100)
    st = det.init_state()
    ts = np.arange(40, dtype=np.int64) * 1000
    x = np.arange(40, dtype=np.float64)
    prev = det.step(st, ts[:25], x[:25])[:, 0]
    prev = np.r_[prev, det.step(st, ts[25:], x[25:])[:, 0]]  # chunked: same as one pass
    assert np.all(np.isnan(prev[:10]))
    np.testing.assert_array_equal(prev[10:], x[:30])
    assert memory_length(st) <= 12  # only about one period is kept
    # a stream faster than period / max_len keeps too little history: no seasonal view
    short = SeasonalMemory(1, period_ms=10_000, max_len=5)
    assert np.all(np.isnan(short.step(short.init_state(), ts, x)))
    # "one period earlier" means within half the current sampling interval of t - period
    gappy = SeasonalMemory(1, period_ms=10_000)
    out = gappy.step(gappy.init_state(), np.array([0, 1000, 2000, 12_500, 13_000]), np.arange(5.0))[:, 0]
    assert out[3] == 2.0  # after a 10.5 s gap: 2_500 is within 5_250 ms of the reading at 2_000
    assert np.isnan(out[4])  # 3_000 is not within 250 ms of any reading


def test_seasonal_lookup_of_streams_with_far_apart_clocks_equals_each_alone() -> None:
    """Streams whose times lie too far apart for one combined search key are looked up stream by stream, with
    what each gets alone."""
    from streamer.detectors.seasonal import seasonal_lookup

    rng = np.random.default_rng(4)
    starts = [0, 2**61 + 12_345]  # a clock at the epoch beside one in the far future
    ts = [s + np.cumsum(rng.integers(900, 1100, 80)) for s in starts]
    x = [rng.normal(size=(80, 1)) for _ in starts]
    together = [{"ts": b"", "x": b""} for _ in starts]
    alone = [{"ts": b"", "x": b""} for _ in starts]
    want, got = [], []
    for a, b in ((0, 30), (30, 31), (31, 80)):  # in chunks, so the memories are read back too
        got.append(seasonal_lookup(together, np.array([0, b - a, 2 * (b - a)]),
                                   np.concatenate([t[a:b] for t in ts]), np.concatenate([v[a:b] for v in x]),
                                   10_000, 50))
        want.append(np.concatenate([seasonal_lookup([alone[i]], np.array([0, b - a]), ts[i][a:b], x[i][a:b],
                                                    10_000, 50) for i in range(2)]))
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    assert np.isfinite(np.concatenate(got)).sum() > 50  # readings one period earlier were found
    assert together == alone
