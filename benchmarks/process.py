"""The daemon's work per batch without a broker: `Service.process` and the commit's state snapshots.

At half of peak a batch holds a few readings of each of many streams, so what a batch costs depends on the
streams in it as much as on its readings (a forecast record, detector state and a changelog snapshot per
stream). This times one batch of B single-reading records over S streams, as the daemon's loop runs it
(decode and validate, step the engine, forecasts, anomaly scores, the commit's snapshots of every changed
stream, a young garbage collection), with anomaly scoring on and off, the two services taking turns on the
same batches so that a drift of the machine falls on both. The commit hands its records to a stand-in
committer: no Kafka. Medians over the batches.

Usage: python -m benchmarks.process [--json] [--streams S] [--batch B] [--batches N] [--chunk K] [--warm W]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.e2e import stream_ids
from streamer.config import load_settings
from streamer.models import ModelConfig, build_model
from streamer.service import Service


class NoCommit:
    """Stands in for the Committer: takes the commit's records and offsets and publishes nothing."""

    last_seconds = 0.0

    def start(self, records, offsets) -> None:
        self.records = len(records)

    def wait(self) -> bool:
        return False

    def idle(self) -> bool:
        return True

    def close(self) -> None:
        pass


def service(anomalies: bool, hidden: int, device: str = "cpu") -> Service:
    """A service with the benchmark's model (GRU, one channel) and a forecast for every reading."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=1, hidden=hidden, heads=("forecast",),
                                    horizon=1)).eval()
    settings = load_settings(kafka={"forecast_topic": "forecasts"}, engine={"device": device},
                             output={"forecast_every": 1, "anomalies": anomalies}, metrics={"enabled": False})
    svc = Service(settings, model=model)
    svc.use_committer(NoCommit())
    return svc


def batches(streams: int, per_batch: int, n: int, chunk: int = 1, ago_ms: int = 10_000_000,
            every_ms: int = 0) -> list[list[SimpleNamespace]]:
    """`n` polls' worth of records (what the consumer returns: key, value, origin, timestamp), streams in turn;
    each record one reading, or a chunk of `chunk` readings of one stream (`per_batch` counts readings), the
    first `ago_ms` before now; a stream's readings `every_ms` apart (0: records 1 ms apart, whatever the stream)."""
    t0 = int(time.time() * 1000) - ago_ms
    values = [f"{v:.5f}" for v in np.random.default_rng(0).standard_normal(4096).tolist()]
    ids = stream_ids(streams)  # the end-to-end benchmark's stream names
    out, i = [], 0
    for _ in range(n):
        recs = []
        for _ in range(max(1, per_batch // chunk)):
            stream = ids[i % streams]
            t, step = (t0 + (i // streams) * chunk * every_ms + i % streams, every_ms) if every_ms else (
                t0 + i * chunk, 1)
            if chunk == 1:
                body = f'{{"stream":"{stream}","ts":{t},"values":[{values[i % 4096]}]}}'
            else:
                ts = ",".join(str(t + k * step) for k in range(chunk))
                rows = ",".join(f"[{values[(i * chunk + k) % 4096]}]" for k in range(chunk))
                body = f'{{"stream":"{stream}","ts":[{ts}],"values":[{rows}]}}'
            recs.append(SimpleNamespace(value=body.encode(), key=stream.encode(), topic="readings", partition=0,
                                        offset=i, timestamp=t))
            i += 1
        out.append(recs)
    return out


def measure(streams: int, per_batch: int, n: int, hidden: int = 32, device: str = "cpu",
            chunk: int = 1, warm: int = 0) -> dict[str, float]:
    """Median ms per batch (process + commit snapshots + young collection) with anomaly scoring on and off."""
    services = {"anomalies_on": service(True, hidden, device), "anomalies_off": service(False, hidden, device)}
    polls = batches(streams, per_batch, n + 3, chunk)
    # `warm` readings of each stream first, 5 minutes apart, in chunks of 32, ending before the timed ones: the
    # seasonal memories full (a day and a week), as in a daemon that has served slow sensors for a week
    fill = -(-warm // 32)
    filled = batches(streams, 32 * streams, fill, 32, 10_000_000 + fill * 32 * 300_000, 300_000) if warm else []
    for svc in services.values():  # warm-up: every stream resident, lazily created objects created
        for recs in filled + polls[:3]:
            svc.process(recs)
            svc.commit()
    gc.collect()
    gc.freeze()
    gc.disable()  # as the daemon's BatchCollector: a young collection after each batch, inside the timing
    times: dict[str, list[float]] = {k: [] for k in services}
    try:
        for recs in polls[3:]:
            for name, svc in services.items():
                started = time.perf_counter()
                svc.process(recs)
                svc.commit()
                gc.collect(0)
                times[name].append(time.perf_counter() - started)
    finally:
        gc.enable()
        gc.unfreeze()
    on, off = (statistics.median(times[k]) * 1000 for k in ("anomalies_on", "anomalies_off"))
    readings = sum(len(b) for b in polls[3:]) * chunk // n  # a batch's readings (whole records of `chunk`)
    return {"streams": streams, "chunk": chunk, "warm": warm, "batch_readings": readings, "batches": n,
            "ms_per_batch": on, "ms_per_batch_no_anomalies": off, "us_per_reading": on * 1000 / readings,
            "anomaly_share": 1 - off / on}


def main(argv: list[str] | None = None) -> int:
    """Measure one or more (streams, batch) shapes; print a table (and JSON with --json)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.process", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1000, 100], help="streams in each batch")
    ap.add_argument("--batch", type=int, default=3300, help="readings per batch (3300: half of peak here)")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per service")
    ap.add_argument("--chunk", type=int, default=1, help="readings per record (32: a gateway's chunk records)")
    ap.add_argument("--warm", type=int, default=0,
                    help="readings of each stream, 5 minutes apart, before the timed batches (2200: full "
                    "seasonal memories)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--device", default="cpu", help="the engine's device (cpu, cuda)")
    args = ap.parse_args(argv)
    rows = [measure(s, args.batch, args.batches, device=args.device, chunk=args.chunk, warm=args.warm)
            for s in args.streams]
    print(f"{'streams':>8} {'readings':>9} {'ms/batch':>9} {'us/reading':>11} {'no anomalies':>13} "
          f"{'anomaly share':>14}")
    for r in rows:
        print(f"{r['streams']:>8} {r['batch_readings']:>9} {r['ms_per_batch']:>9.1f} {r['us_per_reading']:>11.2f} "
              f"{r['ms_per_batch_no_anomalies']:>13.1f} {r['anomaly_share']:>14.2f}")
    if args.json:
        print(json.dumps({"device": args.device, "shapes": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
