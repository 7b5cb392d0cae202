"""Engine throughput against the raw fused RNN call, naive per-stream stepping and River HST.

Usage: python -m benchmarks.engine [--quick] [--json] [--device cuda] [--reps N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

from streamer.engine import Chunk, Engine
from streamer.models import ModelConfig, build_model, make_plan
from streamer.state import StateStore

N_FEATURES = 8
MAX_CHUNK = 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(n_streams: int, n_steps: int, seed: int) -> list[list[Chunk]]:
    """n_steps batches, each with one chunk per stream of length uniform in 1..MAX_CHUNK."""
    rng = np.random.default_rng(seed)
    ids = [f"sensor-{i:07d}" for i in range(n_streams)]
    steps = []
    t0 = 0
    for _ in range(n_steps):
        lengths = rng.integers(1, MAX_CHUNK + 1, n_streams)
        values = rng.standard_normal((int(lengths.sum()), N_FEATURES), dtype=np.float32)
        offs = np.concatenate(([0], np.cumsum(lengths))).tolist()
        ts = np.arange(t0, t0 + MAX_CHUNK, dtype=np.int64)
        steps.append([Chunk(s, ts[: b - a], values[a:b]) for s, a, b in zip(ids, offs, offs[1:], strict=False)])
        t0 += MAX_CHUNK
    return steps


def _flat(chunks: list[Chunk]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(c.ts) for c in chunks], dtype=np.int64)
    return np.concatenate([c.values for c in chunks]), lengths


def _prepare_ceiling(model, chunks, device):
    """Inputs for the raw recurrent call on exactly these readings, built before any timing."""
    values, lengths = _flat(chunks)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    layers, hidden, names = model.config.layers, model.config.hidden, model.state_names

    def hx(rows):
        h = [torch.zeros(layers, rows, hidden, device=device) for _ in names]
        return tuple(h) if len(h) == 2 else h[0]

    p = make_plan(lengths, offsets, "packed")
    packed = PackedSequence(torch.from_numpy(values[p.gather]).to(device), torch.from_numpy(p.batch_sizes))
    s = make_plan(lengths, offsets, "segments")  # the engine's layout, filler rows included
    x = torch.from_numpy(values[s.gather]).to(device)
    calls, pos = [], 0
    for _, rows, steps in s.segments:
        calls.append((x[pos : pos + rows * steps].view(rows, steps, -1), hx(rows)))
        pos += rows * steps
    return (packed, hx(len(lengths))), calls, p.n


def _timed(fn, device) -> float:
    gc.collect()
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def bench_engine_and_ceiling(model, steps, warm, device, strategy) -> dict[str, list[float]]:
    """Per timed step, back to back on the same readings: Engine.step, the raw packed call, the raw segment calls.

    The first `warm` steps allocate every stream and warm oneDNN's kernel cache (a steady state service's).
    """
    engine = Engine.from_model(model, capacity=len(steps[0]), device=device, strategy=strategy)
    rnn = model.rnn
    out: dict[str, list[float]] = {"engine": [], "engine_access": [], "packed": [], "segments": []}
    with torch.inference_mode():
        for chunks in steps[:warm]:
            engine.step(chunks)
            (packed, h0), calls, _ = _prepare_ceiling(model, chunks, device)
            rnn(packed, h0)
    for chunks in steps[warm:]:
        (packed, h0), calls, n = _prepare_ceiling(model, chunks, device)
        gc.collect()
        t = time.perf_counter()
        results = engine.step(chunks)
        t_engine = time.perf_counter() - t
        for r in results:  # what a consumer pays on top: materialise every per-stream view
            r.outputs  # noqa: B018
            r.inputs  # noqa: B018
            r.ts  # noqa: B018
        out["engine"].append(n / t_engine)
        out["engine_access"].append(n / (time.perf_counter() - t))
        with torch.inference_mode():
            out["packed"].append(n / _timed(lambda p=packed, h=h0: rnn(p, h), device))
            out["segments"].append(n / _timed(lambda cs=calls: [rnn(x, h) for x, h in cs], device))
    return out


def bench_naive(model, steps, device, subset: int, per_reading: bool = False) -> float:
    """A subset of streams stepped one at a time through model.forward with their own state; readings/s.

    Each stream's chunk is one call, or with per_reading each reading is one call.
    """
    states: dict[str, dict[str, torch.Tensor]] = {}
    n, total = 0, 0.0
    with torch.inference_mode():
        for k, chunks in enumerate(steps):
            t = time.perf_counter()
            for c in chunks[:subset]:
                x = torch.from_numpy(c.values).to(device)[None]
                if per_reading:
                    for i in range(x.shape[1]):
                        _, states[c.stream] = model(x[:, i : i + 1], state=states.get(c.stream))
                else:
                    _, states[c.stream] = model(x, state=states.get(c.stream))
            _sync(device)
            if k:  # step 0 warms up
                total += time.perf_counter() - t
                n += sum(len(c.ts) for c in chunks[:subset])
    return n / total


def bench_river(steps, max_samples: int) -> float | None:
    """River HalfSpaceTrees score_one + learn_one per reading (one model, dicts built beforehand); samples/s."""
    try:
        from river import anomaly
    except ImportError:
        return None
    values, _ = _flat(steps[1])
    xs = [dict(zip([f"x{i}" for i in range(N_FEATURES)], row, strict=True)) for row in values[:max_samples].tolist()]
    hst = anomaly.HalfSpaceTrees(seed=0)  # River's defaults: 10 trees, height 8, window 250
    for x in xs[:300]:
        hst.score_one(x)
        hst.learn_one(x)
    t = time.perf_counter()
    for x in xs[300:]:
        hst.score_one(x)
        hst.learn_one(x)
    return (len(xs) - 300) / (time.perf_counter() - t)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_per_stream(n: int = 1_000_000, hidden: int = 64) -> dict[str, float]:
    """Resident bytes per stream of a full StateStore (LSTM, 1 layer): RSS delta / n, and tensor bytes / n."""
    ids = [f"sensor-{i:07d}" for i in range(n)]  # the ids are held by the store, so they count
    gc.collect()
    before = _rss()
    ids_bytes = sum(sys.getsizeof(s) for s in ids[:1000]) / 1000
    store = StateStore({"h": (1, hidden), "c": (1, hidden)}, n)
    store.slots(ids, now=0.0)
    after = _rss()
    out = {
        "rss_bytes_per_stream_incl_ids": (after - before) / n + ids_bytes,
        "tensor_bytes_per_stream": store.nbytes() / n,
        "id_string_bytes_per_stream": ids_bytes,
    }
    del store
    return out


def bytes_per_stream_fresh(n: int) -> dict[str, float]:
    """bytes_per_stream in a fresh interpreter: in this one, memory freed by earlier cases would be reused
    and the RSS delta would undercount."""
    code = f"import json; from benchmarks.engine import bytes_per_stream; print(json.dumps(bytes_per_stream({n})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_case(family, hidden, n_streams, device, reps, warm, naive_subset, strategy) -> dict[str, Any]:
    """All measurements for one (family, hidden, streams) case on the same data."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, N_FEATURES, hidden=hidden)).to(device).eval()
    steps = make_steps(n_streams, warm + reps, seed=n_streams + hidden)
    r = bench_engine_and_ceiling(model, steps, warm, device, strategy)
    naive = bench_naive(model, [s[:naive_subset] for s in steps[:3]], device, naive_subset)
    naive_1 = bench_naive(model, [s[: naive_subset // 4] for s in steps[:2]], device, naive_subset // 4, True)
    med = statistics.median
    ratio = med(e / c for e, c in zip(r["engine"], r["packed"], strict=True))
    ratio_seg = med(e / c for e, c in zip(r["engine"], r["segments"], strict=True))
    e = med(r["engine"])
    state_bytes = sum(int(np.prod(shape)) * 4 for shape in model.state_shapes().values())
    return {
        "state_bytes_per_stream": state_bytes,  # the stream's state tensors on the device (float32)
        "family": family,
        "hidden": hidden,
        "layers": 1,
        "streams": n_streams,
        "readings_per_step": int(np.mean([sum(len(c.ts) for c in s) for s in steps[warm:]])),
        "engine_readings_per_s": e,
        "engine_with_result_access_readings_per_s": med(r["engine_access"]),
        "ceiling_readings_per_s": med(r["packed"]),
        "ceiling_segments_readings_per_s": med(r["segments"]),
        "naive_readings_per_s": naive,
        "naive_per_reading_readings_per_s": naive_1,
        "engine_vs_ceiling": ratio,
        "engine_vs_ceiling_segments": ratio_seg,
        "engine_vs_naive": e / naive,
        "engine_vs_naive_per_reading": e / naive_1,
        "engine_rates": r["engine"],
        "ceiling_rates": r["packed"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table (and one JSON line with --json)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer cases; under a minute")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per case (median reported)")
    ap.add_argument("--warm", type=int, default=3, help="untimed warm-up steps per case")
    ap.add_argument("--strategy", default=None, choices=["segments", "packed"], help="engine strategy")
    ap.add_argument("--streams", type=int, nargs="+", default=None, help="resident streams per case")
    ap.add_argument("--families", nargs="+", default=["lstm", "gru"], choices=["rnn", "lstm", "gru"])
    ap.add_argument("--hiddens", type=int, nargs="+", default=None, help="hidden sizes")
    ap.add_argument("--no-river", action="store_true", help="skip River's HalfSpaceTrees")
    ap.add_argument("--no-memory", action="store_true", help="skip the resident-bytes measurement (CPU RSS)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    reps = args.reps or (3 if args.quick else 5)
    streams = args.streams or ([1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])
    hiddens = args.hiddens or ([64] if args.quick else [64, 128])
    cases = []
    started = time.perf_counter()
    for family in args.families:
        for hidden in hiddens:
            for n in streams:
                subset = min(n, 100 if args.quick else 300)
                cases.append(run_case(family, hidden, n, device, reps, args.warm, subset, args.strategy))
                print(f"# {family} h{hidden} {n} streams done ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    river = None if args.no_river else bench_river(make_steps(10_000, 2, seed=1), 10_000 if args.quick else 20_000)
    mem_streams = 200_000 if args.quick else 1_000_000
    mem = ({k: None for k in ("rss_bytes_per_stream_incl_ids", "tensor_bytes_per_stream", "id_string_bytes_per_stream")}
           if args.no_memory else bytes_per_stream_fresh(mem_streams))
    main_case = next((c for c in cases if c["family"] == "lstm" and c["hidden"] == 64 and c["streams"] == 10_000),
                     cases[0])
    summary = {
        "engine_readings_per_s": main_case["engine_readings_per_s"],
        "ceiling_readings_per_s": main_case["ceiling_readings_per_s"],
        "ceiling_segments_readings_per_s": main_case["ceiling_segments_readings_per_s"],
        "naive_readings_per_s": main_case["naive_readings_per_s"],
        "naive_per_reading_readings_per_s": main_case["naive_per_reading_readings_per_s"],
        "river_hst_samples_per_s": river,
        "bytes_per_stream": mem["rss_bytes_per_stream_incl_ids"],
        "bytes_per_stream_streams": mem_streams,
        "memory": mem,
        "engine_vs_ceiling": main_case["engine_vs_ceiling"],
        "engine_vs_naive": main_case["engine_vs_naive"],
        "engine_vs_naive_per_reading": main_case["engine_vs_naive_per_reading"],
        "engine_vs_river": main_case["engine_readings_per_s"] / river if river else None,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "reps": reps,
        "n_features": N_FEATURES,
        "chunk_lengths": f"uniform 1..{MAX_CHUNK}",
        "quick": args.quick,
        "cases": cases,
    }
    hdr = (
        f"{'family':6} {'hid':>4} {'streams':>8} {'engine/s':>10} {'+access/s':>10} {'ceil(pk)/s':>11} "
        f"{'ceil(seg)/s':>11} {'naive/s':>9} {'naive1/s':>9} {'eng/ceil':>8} {'eng/naive':>9} {'eng/naive1':>10}"
    )
    print(hdr)
    for c in cases:
        print(
            f"{c['family']:6} {c['hidden']:>4} {c['streams']:>8} {c['engine_readings_per_s']:>10.0f} "
            f"{c['engine_with_result_access_readings_per_s']:>10.0f} {c['ceiling_readings_per_s']:>11.0f} "
            f"{c['ceiling_segments_readings_per_s']:>11.0f} {c['naive_readings_per_s']:>9.0f} "
            f"{c['naive_per_reading_readings_per_s']:>9.0f} {c['engine_vs_ceiling']:>8.2f} "
            f"{c['engine_vs_naive']:>9.1f} {c['engine_vs_naive_per_reading']:>10.1f}"
        )
    print(
        "ceil(pk): one nn.LSTM/GRU call on a prepared PackedSequence; ceil(seg): the same calls in the engine's "
        "segment layout;\nnaive: model.forward per stream chunk; naive1: per reading; +access: step plus touching "
        "every result's arrays"
    )
    print(f"River HalfSpaceTrees score_one+learn_one: {river if river is None else round(river)} samples/s")
    if not args.no_memory:
        print(
            f"resident bytes/stream at {summary['bytes_per_stream_streams']} streams (LSTM h64): "
            f"{mem['rss_bytes_per_stream_incl_ids']:.0f} (tensors {mem['tensor_bytes_per_stream']:.0f}, "
            f"id string {mem['id_string_bytes_per_stream']:.0f})"
        )
    print(
        f"medians of {reps} steps; device {device}; torch threads {torch.get_num_threads()}; layers=1; "
        f"{N_FEATURES} features; chunk lengths uniform 1..{MAX_CHUNK}"
    )
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
