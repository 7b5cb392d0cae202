"""The daemon beside what a user would build instead, on the same topic, readings and model size.

One input topic of single-reading records (S streams round-robin, keyed by stream id) is produced once; each
contender then reads it from the beginning in its own process and consumer group and publishes one output per
reading to its own topic:

- streamer: `streamer serve` (GRU, 32 units, its default anomaly pipeline on top), exactly-once and at-least-once;
- handwritten: a kafka-python loop a user writes by hand: a dict of torch GRU hidden states per stream, each record
  stepped as it comes (GRUCell, 32 units), a forecast record per reading, offsets committed every second after a
  flush (at-least-once);
- quix: Quix Streams (`quixstreams`, on confluent-kafka): the same GRU stepped per message in
  `sdf.apply(..., stateful=True)` with the hidden state in its per-key RocksDB state, exactly-once;
- river: River's HalfSpaceTrees behind a MinMaxScaler per stream in the same kafka-python loop (the non-neural
  choice), at-least-once.

Each is timed as the end-to-end benchmark times the daemon: from the first to the last output arriving at a
read_committed reader, readings per second over that window and the contender's CPU per reading in it (/proc).
The daemon serves the whole topic (600k readings, as benchmarks.e2e: its per-stream start-up is amortised as it is
in a long-running service); the peers, 20-100 times slower, are timed over the topic's first 30k readings, which
is past their own start-up (a dict entry, a RocksDB key or a River model per stream).
Peers are an optional extra: `make bench-peers` installs `.[peers]` and runs `python -m benchmarks.peers --json`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from benchmarks.e2e import (
    cpu_seconds,
    create_topics,
    e2e_run,
    expected_forecasts,
    log,
    machine_info,
    produce_input,
    watcher,
)

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 32
PEERS = ("handwritten", "quix", "river")
GUARANTEE = {"handwritten": "at-least-once", "quix": "exactly-once", "river": "at-least-once"}


# -- the contenders (each runs in its own child process until SIGTERM) --------------------------------------------
def gru(seed: int = 0) -> tuple[torch.nn.GRUCell, torch.nn.Linear]:
    """The peers' model: a GRU cell of 32 units over one value and a linear forecast head (as the daemon's), on one
    thread: a step of one reading is too small for a second one to pay for itself."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    return torch.nn.GRUCell(1, HIDDEN).eval(), torch.nn.Linear(HIDDEN, 1).eval()


def consumer_loop(bootstrap: str, src: str, out: str, group: str, handle: Any) -> None:
    """A kafka-python consumer loop as a user writes it: `handle(message)` gives each reading's output body; the
    producer is flushed and the offsets committed every second (at-least-once)."""
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(src, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    # the group's first join (in the first poll) must come after the topic's metadata: a leader that joins before
    # it assigns nothing and kafka-python never rejoins (dpkp/kafka-python#2377; the daemon waits the same way)
    deadline = time.monotonic() + 30
    while not consumer.partitions_for_topic(src):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no partition metadata for {src}")
        time.sleep(0.1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    committed = time.monotonic()
    while True:
        for records in consumer.poll(timeout_ms=100).values():
            for r in records:
                producer.send(out, key=r.key, value=json.dumps(handle(json.loads(r.value))).encode())
        if time.monotonic() - committed >= 1.0:
            producer.flush()
            consumer.commit()
            committed = time.monotonic()


def run_handwritten(bootstrap: str, src: str, out: str, group: str) -> None:
    """A dict of GRU hidden states, each reading stepped as it comes: what a user writes first."""
    cell, head = gru()
    hidden: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(msg: dict[str, Any]) -> dict[str, Any]:
        h = hidden[msg["stream"]] = cell(torch.tensor([msg["values"]], dtype=torch.float32), hidden.get(msg["stream"]))
        return {"stream": msg["stream"], "ts": msg["ts"], "forecast": head(h).item()}

    consumer_loop(bootstrap, src, out, group, step)


def run_river(bootstrap: str, src: str, out: str, group: str) -> None:
    """HalfSpaceTrees per stream (River's streaming anomaly detector), scored then learned, reading by reading."""
    from river import anomaly, compose, preprocessing

    models: dict[str, Any] = {}

    def score(msg: dict[str, Any]) -> dict[str, Any]:
        model = models.get(msg["stream"])
        if model is None:
            model = models[msg["stream"]] = compose.Pipeline(preprocessing.MinMaxScaler(),
                                                             anomaly.HalfSpaceTrees(seed=0))
        x = {"value": msg["values"][0]}
        found = model.score_one(x)
        model.learn_one(x)
        return {"stream": msg["stream"], "ts": msg["ts"], "score": found}

    consumer_loop(bootstrap, src, out, group, score)


def run_quix(bootstrap: str, src: str, out: str, group: str) -> None:
    """The same GRU stepped per message by Quix Streams, its hidden state in Quix's per-key state, exactly-once."""
    from quixstreams import Application

    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      processing_guarantee="exactly-once", state_dir=tempfile.mkdtemp(prefix="peers-quix-"))
    sdf = app.dataframe(app.topic(src, value_deserializer="json"))
    cell, head = gru()

    def step(msg: dict[str, Any], state: Any) -> dict[str, Any]:
        before = state.get("h")
        with torch.no_grad():
            h = cell(torch.tensor([msg["values"]], dtype=torch.float32),
                     None if before is None else torch.tensor([before]))
            state.set("h", h[0].tolist())
            return {"stream": msg["stream"], "ts": msg["ts"], "forecast": head(h).item()}

    sdf.apply(step, stateful=True).to_topic(app.topic(out, value_serializer="json"))
    app.run()


RUNNERS = {"handwritten": run_handwritten, "quix": run_quix, "river": run_river}


# -- measuring ------------------------------------------------------------------------------------------------
def measure_peer(name: str, bootstrap: str, src: str, want: int, timeout: float,
                 python: str = sys.executable) -> dict[str, Any]:
    """Run one contender on `src` from the beginning; time its outputs as they arrive (read_committed)."""
    run = uuid.uuid4().hex[:8]
    out = f"peers-{name}-{run}"
    create_topics(bootstrap, [out], 1)
    watch = watcher(bootstrap, out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([python, "-m", "benchmarks.peers", "--peer", name, "--bootstrap", bootstrap,
                             "--src", src, "--out", out, "--group", f"peers-{name}-{run}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.perf_counter()
    seen = first_batch = arrivals = 0
    first = last = None
    cpu_first = cpu_last = None
    deadline = time.monotonic() + timeout
    try:
        while seen < want and time.monotonic() < deadline and proc.poll() is None:
            got = sum(len(recs) for recs in watch.poll(timeout_ms=100, max_records=100_000).values())
            if not got:
                continue
            now, cpu_last = time.perf_counter(), cpu_seconds(proc.pid)
            if first is None:
                first, first_batch, cpu_first = now, got, cpu_last
            seen, arrivals, last = seen + got, arrivals + 1, now
    finally:
        watch.close()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if seen < want:
        raise RuntimeError(f"{name}: {seen} of {want} outputs arrived; its stderr ends:\n{err[-2000:]}")
    if arrivals >= 3 and first_batch < 0.5 * seen:
        # the readings of the first arrival were processed before the window opened
        span, window, cpu_spent, label = last - first, seen - first_batch, None, "first_to_last"
        if cpu_first is not None and cpu_last is not None:
            cpu_spent = cpu_last - cpu_first
    else:  # outputs came in one or two commits (exactly-once every few seconds): a lower bound, start-up included
        span, window, cpu_spent, label = last - started, seen, cpu_last, "start_to_last"
    return {"per_s": window / max(span, 1e-9), "cpu_us_per_reading": None if cpu_spent is None else
            cpu_spent / window * 1e6, "window": label, "arrivals": arrivals, "startup_s": first - started,
            "seconds": span, "guarantee": GUARANTEE[name]}


def measure_streamer(bootstrap: str, src: str, produced: dict[str, Any], timeout: float,
                     exactly_once: bool) -> dict[str, Any]:
    """`streamer serve` on the same topic, timed by the end-to-end benchmark's own method."""
    settings = {"STREAMER_MODEL__CHECKPOINT": "random", "STREAMER_MODEL__FAMILY": "gru",
                "STREAMER_MODEL__HIDDEN": str(HIDDEN), "STREAMER_OUTPUT__FORECAST_EVERY": "1"}
    want = expected_forecasts(produced["per_stream"], 1)
    got = e2e_run(bootstrap, src, produced["readings"], want, exactly_once, settings, 1, timeout)
    cpu = got.get("first_to_last_daemon_cpu_us") or got.get("ready_to_last_daemon_cpu_us")
    return {"per_s": got["per_s"], "cpu_us_per_reading": cpu, "window": got["window"],
            "guarantee": "exactly-once" if exactly_once else "at-least-once"}


def contenders(args: argparse.Namespace) -> list[str]:
    """The peers asked for; a missing optional package fails here, naming the make target that installs it."""
    names = [p for p in args.peers.split(",") if p]
    unknown = set(names) - set(PEERS)
    if unknown:
        raise SystemExit(f"--peers: unknown {sorted(unknown)}; choose from {','.join(PEERS)}")
    needs = {"quix": "quixstreams", "river": "river"}
    missing = [needs[n] for n in names if n in needs and subprocess.run(
        [args.python, "-c", f"import {needs[n]}"], cwd=ROOT, capture_output=True).returncode != 0]
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)}; `make bench-peers` installs the peers extra "
                         "(or pass --peers without them)")
    return names


def run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    """Produce the input once, then time the daemon and every peer on it, one after the other."""
    names = contenders(args)
    src = f"peers-in-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [src], 1)
    produced = produce_input(bootstrap, src, args.readings, args.streams, 1)
    log(f"produced {produced['readings']:,} readings of {args.streams} streams into {src}")
    results: dict[str, dict[str, Any]] = {}
    for exactly_once, key in ((True, "streamer"), (False, "streamer_alo")):
        log(f"{key}: streamer serve")
        results[key] = measure_streamer(bootstrap, src, produced, args.timeout, exactly_once)
        log(f"{key}: {results[key]['per_s']:,.0f} readings/s")
    for name in names:
        log(f"{name}: running")
        want = min(args.peer_readings, produced["readings"])
        results[name] = measure_peer(name, bootstrap, src, want, args.timeout, args.python)
        log(f"{name}: {results[name]['per_s']:,.0f} readings/s")
    out: dict[str, Any] = {}
    for key, r in results.items():
        out[f"{key}_per_s"] = r["per_s"]
        out[f"{key}_cpu_us_per_reading"] = r["cpu_us_per_reading"]
    for name in names:
        out[f"streamer_over_{name}"] = results["streamer"]["per_s"] / results[name]["per_s"]
    out["runs"] = results
    return out


def table(out: dict[str, Any]) -> str:
    """The figures as a small text table."""
    lines = [f"{'contender':<14} {'guarantee':<14} {'readings/s':>12} {'CPU us/reading':>15}  window"]
    for key, r in out["runs"].items():
        cpu = r["cpu_us_per_reading"]
        lines.append(f"{key:<14} {r['guarantee']:<14} {r['per_s']:>12,.0f} "
                     f"{'-' if cpu is None else f'{cpu:.1f}':>15}  {r['window']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (or, with --peer, one contender as a child process)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", help="HOST:PORT of an existing broker (default: start the local one)")
    ap.add_argument("--streams", type=int, default=1000, help="distinct stream ids (default 1000)")
    ap.add_argument("--readings", type=int, default=None,
                    help="readings in the topic, all of which the daemon serves (default 600k; 100k with --quick)")
    ap.add_argument("--peer-readings", type=int, default=None,
                    help="readings each peer is timed over, the topic's first ones (default 30k; 6k with --quick)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {','.join(PEERS)} (default all)")
    ap.add_argument("--quick", action="store_true", help="100k readings, peers timed over 6k: under 5 minutes")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up on one contender after this long")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the peers (make bench-peers: .venv-peers, where the peers extra lives)")
    ap.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)  # the child process of one contender
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--group", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        RUNNERS[args.peer](args.bootstrap, args.src, args.out, args.group)
        return 0
    args.readings = args.readings or (100_000 if args.quick else 600_000)
    args.peer_readings = args.peer_readings or (6_000 if args.quick else 30_000)
    started = time.perf_counter()
    info = machine_info()
    broker = None
    if not args.bootstrap:
        from lab.local_kafka import LocalKafka

        broker = LocalKafka()
        broker.up()
    try:
        out = run(args, args.bootstrap or broker.bootstrap)
    finally:
        if broker is not None:
            broker.down()
    out.update(streams=args.streams, readings=args.readings, peer_readings=args.peer_readings, quick=args.quick,
               machine=info, hidden=HIDDEN,
               wall_s=time.perf_counter() - started)
    print(table(out))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
