"""Conformance of every detector class (each `Detector` subclass in streamer.detectors, found by walking the package:
one without a case here fails `test_every_detector_class_has_a_case`): no look-ahead, chunking equivalence, state
round-trip through the state store's snapshot (extras), NaN and constant streams, scores within the stated range,
plain-data state."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from streamer.detectors import (
    AlertLifecycle,
    AnomalyLikelihood,
    AnomalyPipeline,
    Detector,
    DynamicThreshold,
    ForecastErrorScorer,
    HysteresisEvents,
    OnlineNormaliser,
    PipelineConfig,
    SeasonalMemory,
    SilenceDetector,
    TelemanomSequences,
    check_plain,
)
from streamer.state import StateStore

C = 2  # channels of the test streams
Out = tuple[dict[str, np.ndarray], list[dict[str, Any]]]


@dataclass
class Case:
    """A detector and how a generic stream (ts [T], x [T, C]) feeds it: run(det, state, ts, x) -> (arrays, msgs)."""

    name: str
    make: Callable[[], Any]
    run: Callable[[Any, dict, np.ndarray, np.ndarray], Out]


def _normaliser(d: OnlineNormaliser, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    return {"z": d.step(st, ts, x)}, []


def _forecast_error(d: ForecastErrorScorer, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    out = d.step(st, ts, x, 0.9 * x)  # a causal "forecast": made at t from x[t] only
    return {"score": out["score"], "channels": out["channels"]}, []


def _likelihood(d: AnomalyLikelihood, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    out = d.step(st, ts, np.abs(x[:, 0]))
    return {"score": out["score"], "likelihood": out["likelihood"]}, []


def _dynamic(d: DynamicThreshold, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    out = d.step(st, ts, np.abs(x[:, 0]))
    return {"ratio": out["ratio"], "flag": out["flag"].astype(float)}, []


def _seasonal(d: SeasonalMemory, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    return {"prev": d.step(st, ts, x)}, []


def _telemanom(d: TelemanomSequences, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    out = d.step(st, ts, np.abs(x[:, 0]), x[:, 1])
    n0 = st["n"] - len(ts)  # global number of the chunk's first reading
    msgs = [{"row": int(r), "ts": int(ts[k - n0])} for r, k in zip(out["anomalous"], out["decided"], strict=True)]
    return {"es": out["es"]}, msgs


def _alerts(d: AlertLifecycle, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    msgs = d.step(st, ts, np.abs(x[:, 0]), np.abs(x), stream="s")
    return {}, msgs


def _events(d: HysteresisEvents, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    with np.errstate(over="ignore", under="ignore"):
        p = 1.0 / (1.0 + np.exp(-x[:, 0]))
    return {}, d.step(st, ts, p, stream="s")


def _silence(d: SilenceDetector, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    msgs: list[dict[str, Any]] = []
    for t in ts.tolist():  # the daemon checks on its timer, here just before each reading arrives
        msgs += d.check(st, t - 1, stream="s")
        msgs += d.step(st, np.array([t]), stream="s")
    return {}, msgs


def _pipeline(d: AnomalyPipeline, st: dict, ts: np.ndarray, x: np.ndarray) -> Out:
    xn = d.prepare(st, ts, x)
    out = d.score(st, ts, xn, xn * 0.5, stream="s")  # stand-in for the model's forecasts (causal)
    keys = ("score", "likelihood", "raw", "ratio", "fired")
    return {"xn": xn, **{k: out[k] for k in keys}}, out["alerts"]


CASES = [
    Case("normaliser", lambda: OnlineNormaliser(C, halflife=50), _normaliser),
    Case("forecast_error", lambda: ForecastErrorScorer(C, halflife=50, warmup=5), _forecast_error),
    Case("likelihood", lambda: AnomalyLikelihood(short=5, halflife=100, warmup=20), _likelihood),
    Case("dynamic_threshold", lambda: DynamicThreshold(window=100, span=5, every=7, warmup=20), _dynamic),
    Case("seasonal", lambda: SeasonalMemory(C, period_ms=30_000, max_len=50), _seasonal),
    Case("telemanom", lambda: TelemanomSequences(window=120, batch=10, span=5, warmup=20), _telemanom),
    Case("alerts", lambda: AlertLifecycle(on=1.5, off=1.0, resolve_after=3, update_every=5, critical=3.0), _alerts),
    Case("events", lambda: HysteresisEvents(on=0.7, off=0.3, min_on=2, min_off=2), _events),
    Case("silence", lambda: SilenceDetector(timeout_ms=5_000), _silence),
    Case("pipeline", lambda: AnomalyPipeline(C, PipelineConfig(error_warmup=5, likelihood_warmup=20, short=4,
                                                                 dt_window=100, dt_every=7, alert_on=0.3,
                                                                 alert_off=0.2, suppress=5, season_ms=30_000,
                                                                 value_short=3)), _pipeline),
]
IDS = [c.name for c in CASES]


def detector_classes() -> set[type]:
    """Every Detector subclass defined in the streamer.detectors package (its modules imported first)."""
    import importlib
    import pkgutil

    import streamer.detectors as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    found, todo = set(), [Detector]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith(package.__name__ + "."):
                found.add(sub)
    return found


def test_every_detector_class_has_a_case() -> None:
    """A detector added to the package cannot skip this suite."""
    covered = {type(case.make()) for case in CASES}
    missing = sorted(cls.__name__ for cls in detector_classes() - covered)
    assert not missing, f"detectors without a conformance case: {missing}"
    assert len(covered) == len(CASES)  # one case per class


def stream(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A random walk with spikes and a level shift; 1 s apart with a few long gaps."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(size=(n, C)), axis=0) * 0.3 + rng.normal(size=(n, C))
    x[rng.integers(0, n, 6)] += rng.choice([-8.0, 8.0], size=(6, C))
    x[n // 2 :] += 5.0
    gaps = np.where(rng.random(n) < 0.02, 20_000, 1_000)
    return np.cumsum(gaps).astype(np.int64), x


def run_chunks(case: Case, det: Any, ts: np.ndarray, x: np.ndarray, cuts: list[int],
               state: dict | None = None) -> tuple[Out, dict]:
    """Feed [0, T) in chunks ending at `cuts`; returns concatenated outputs and the final state."""
    st = det.init_state(C) if state is None else state
    arrays: dict[str, list[np.ndarray]] = {}
    msgs: list[dict[str, Any]] = []
    a = 0
    for b in [*cuts, len(ts)]:
        if b <= a:
            continue
        arr, m = case.run(det, st, ts[a:b], x[a:b])
        for k, v in arr.items():
            arrays.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
        msgs += m
        a = b
    return ({k: np.concatenate(v) for k, v in arrays.items()}, msgs), st


def assert_same(a: Out, b: Out) -> None:
    """Identical arrays (NaN equal to NaN) and identical messages."""
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    assert a[1] == b[1]


def random_cuts(rng: np.random.Generator, n: int) -> list[int]:
    return sorted(set(rng.integers(1, n, size=int(rng.integers(1, 12))).tolist()))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_chunking_does_not_change_outputs(case: Case, seed: int) -> None:
    ts, x = stream(seed)
    one, _ = run_chunks(case, case.make(), ts, x, [])
    many, _ = run_chunks(case, case.make(), ts, x, random_cuts(np.random.default_rng(seed), len(ts)))
    assert_same(one, many)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_look_ahead(case: Case, seed: int) -> None:
    """Changing readings from row k on never changes an output (or message) of a row before k."""
    rng = np.random.default_rng(100 + seed)
    ts, x = stream(seed)
    k = int(rng.integers(50, len(ts) - 50))
    cuts = random_cuts(rng, len(ts))
    base, _ = run_chunks(case, case.make(), ts, x, cuts)
    x2 = x.copy()
    x2[k:] = rng.normal(size=x2[k:].shape) * 20.0
    x2[k + 5 : k + 9] = np.nan
    changed, _ = run_chunks(case, case.make(), ts, x2, cuts)
    for name, arr in base[0].items():
        np.testing.assert_array_equal(arr[:k], changed[0][name][:k], err_msg=name)
    early = [m for m in base[1] if m["ts"] < ts[k]]
    assert early == [m for m in changed[1] if m["ts"] < ts[k]]


def through_store(state: dict) -> dict:
    """The state after a round trip through a StateStore snapshot (as extras) into a fresh store."""
    check_plain(state)
    a = StateStore({"h": (1, 3)}, capacity=2)
    a.slots(["s"])
    a.set_extra("s", state)
    blob = a.snapshot_one("s")
    b = StateStore({"h": (1, 3)}, capacity=2)
    assert b.restore(blob) == ["s"]
    return b.get_extra("s")


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_state_round_trip_mid_stream(case: Case, seed: int) -> None:
    """Snapshot after row k and restore (JSON extras of the state store): later outputs equal an unbroken run."""
    rng = np.random.default_rng(200 + seed)
    ts, x = stream(seed)
    x[rng.integers(0, len(ts), 5), 0] = np.nan
    k = int(rng.integers(30, len(ts) - 30))
    full, _ = run_chunks(case, case.make(), ts, x, [k])
    first, st = run_chunks(case, case.make(), ts[:k], x[:k], [])
    restored = through_store(copy.deepcopy(st))
    second, _ = run_chunks(case, case.make(), ts[k:], x[k:], [], state=restored)
    joined = ({n: np.concatenate([first[0][n], second[0][n]]) for n in first[0]}, first[1] + second[1])
    assert_same(full, joined)


def check_outputs(case: Case, det: Any, out: Out) -> None:
    """Finite scores inside the detector's stated range; messages with finite numbers."""
    lo, hi = det.score_range
    for name, arr in out[0].items():
        if case.name == "seasonal" and name == "prev":
            arr = arr[np.isfinite(arr)]  # NaN: no reading one period earlier; otherwise a past reading
        if case.name == "pipeline" and name in ("likelihood", "raw", "ratio", "xn"):
            continue  # parts with their own ranges (checked in their own cases)
        assert np.all(np.isfinite(arr)), name
        assert np.all((arr >= lo) & (arr <= hi)), (name, float(arr.min()), float(arr.max()), (lo, hi))
    for m in out[1]:
        for v in m.values():
            if isinstance(v, float):
                assert math.isfinite(v), m


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_nan_constant_and_empty_streams(case: Case) -> None:
    n = 300
    ts = np.arange(n, dtype=np.int64) * 1000
    rng = np.random.default_rng(5)
    noisy = rng.normal(size=(n, C))
    noisy[rng.random((n, C)) < 0.2] = np.nan
    inputs = {
        "constant": np.full((n, C), 3.0),
        "zeros": np.zeros((n, C)),
        "all_nan": np.full((n, C), np.nan),
        "some_nan": noisy,
        "constant_then_step": np.r_[np.full((n // 2, C), 1.0), np.full((n - n // 2, C), 1e6)],
        "huge": np.full((n, C), 1e300) * np.where(rng.random((n, C)) < 0.5, 1, -1),
    }
    for label, x in inputs.items():
        det = case.make()
        with np.errstate(invalid="raise", divide="raise") if label != "huge" else np.errstate(all="ignore"):
            out, st = run_chunks(case, det, ts, x, [7, 100, 101])
        check_plain(st)
        if label != "huge":
            check_outputs(case, det, out)
    det = case.make()
    empty, _ = run_chunks(case, det, ts[:0], np.zeros((0, C)), [])
    assert all(v.size == 0 for v in empty[0].values())


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_within_stated_range(case: Case, seed: int) -> None:
    ts, x = stream(seed)
    det = case.make()
    out, st = run_chunks(case, det, ts, x, random_cuts(np.random.default_rng(seed), len(ts)))
    check_plain(st)
    check_outputs(case, det, out)
