"""`streamer demo`: real series through the real daemon on a real broker, outputs printed as they arrive.

With no STREAMER_MODEL__CHECKPOINT the daemon serves its built-in model (streamer/builtin/); the demo prints the
anomaly alerts it publishes and, for series with NAB labels (data/nab/labels/combined_windows.json), ends with
how many labelled anomaly windows an alert fired in and how many alerts fired outside every window."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamer.config import KafkaSettings, Settings, load_settings
from streamer.errors import KafkaUnavailable
from streamer.kafka.admin import ensure_topics
from streamer.kafka.clients import KafkaConsumer, make_producer, make_reader, reachable
from streamer.kafka.replay import load_series, replay
from streamer.logs import setup_logging
from streamer.schema import forecasts_of

# Two malformed records show that bad input goes to the dead-letter topic instead of stopping the daemon.
BAD_RECORDS = [b'{"stream": "broken-sensor", "ts": 1, "values": [NaN]}', b"not json at all"]


def await_broker(kafka: KafkaSettings, timeout_s: float) -> str | None:
    """Wait up to `timeout_s` for a bootstrap server to accept connections: None once one does, else the error."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reachable(kafka, timeout_s=max(0.1, min(2.0, deadline - time.monotonic())))
            return None
        except KafkaUnavailable as exc:
            if time.monotonic() >= deadline:
                return str(exc)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def demo_settings(bootstrap: str) -> Settings:
    """The daemon's settings for one demo run: fresh topics, group and transactional id."""
    run = uuid.uuid4().hex[:8]
    return load_settings(kafka={
        "bootstrap_servers": bootstrap, "input_topics": [f"demo-readings-{run}"],
        "forecast_topic": f"demo-forecasts-{run}", "dead_letter_topic": f"demo-dead-letters-{run}",
        "alert_topic": f"demo-alerts-{run}", "event_topic": f"demo-events-{run}",
        "group_id": f"demo-{run}", "transactional_id": f"demo-{run}",
    }, engine={"max_batch_readings": 500}, metrics={"port": 0})


def _ms(text: str) -> int:
    dt = datetime.fromisoformat(text.strip())
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def labelled_windows(files: list[Path], labels: Path | None = None) -> dict[str, list[tuple[int, int]]]:
    """NAB's anomaly windows (ms since the epoch, UTC) of each file's stream (its stem), from the labels file
    beside the data (NAB_DIR/labels/combined_windows.json); files it does not name are left out."""
    if not files:
        return {}
    labels = labels or files[0].resolve().parents[1] / "labels" / "combined_windows.json"
    if not labels.is_file():
        return {}
    table = json.loads(labels.read_text())
    out: dict[str, list[tuple[int, int]]] = {}
    for p in files:
        key = f"{p.resolve().parent.name}/{p.name}"
        if key in table:
            out[p.stem] = [(_ms(a), _ms(b)) for a, b in table[key]]
    return out


def window_summary(alerts: list[dict[str, Any]], windows: dict[str, list[tuple[int, int]]]) -> dict[str, int]:
    """Of the labelled windows, how many an alert started in; of the alerts on labelled streams, how many started
    outside every window of their stream (`alerts`: the firing messages; start_ts, stream)."""
    hit: set[tuple[str, int]] = set()
    outside = 0
    for a in alerts:
        inside = [i for i, (lo, hi) in enumerate(windows.get(a["stream"], [])) if lo <= a["start_ts"] <= hi]
        hit.update((a["stream"], i) for i in inside)
        outside += a["stream"] in windows and not inside
    return {"windows": sum(len(w) for w in windows.values()), "alerted": len(hit), "outside": outside,
            "alerts": sum(a["stream"] in windows for a in alerts)}


@dataclass
class Tally:
    """What the demo has seen on the output topics so far."""

    expected: int
    every: int
    windows: dict[str, list[tuple[int, int]]]
    outputs: int = 0
    dead: int = 0
    resolved: int = 0
    last: dict[str, dict] = field(default_factory=dict)
    firing: list[dict] = field(default_factory=list)

    def take(self, kind: str, msg: dict[str, Any]) -> None:
        """Count and print one record of the forecast, dead-letter or alert topic."""
        if kind == "dead":
            self.dead += 1
            print(f"dead letter  reason={msg['reason']:<14} detail={msg['detail']}")
        elif kind == "alert":
            self.alert(msg)
        else:
            for one in forecasts_of(msg):  # a record holds the stream's forecasts of one batch
                self.outputs += 1
                self.last[one["stream"]] = one
                if self.outputs % self.every == 0 or self.outputs == 1:
                    pred = ", ".join(f"{x:.3f}" for x in one["forecast"][0])
                    print(f"output {self.outputs:>6}/{self.expected}  stream={one['stream']:<28} "
                          f"ts={_when(one['ts'])} n={one['n']:<5} forecast=[{pred}]")

    def alert(self, msg: dict[str, Any]) -> None:
        """Print a firing or resolved alert, saying whether it started in a labelled window."""
        if msg["state"] not in ("firing", "resolved"):
            return
        spans = self.windows.get(msg["stream"])
        where = "" if spans is None else (
            "  in a labelled window" if any(lo <= msg["start_ts"] <= hi for lo, hi in spans)
            else "  outside the labelled windows")
        if msg["state"] == "firing":
            self.firing.append(msg)
        else:
            self.resolved += 1
        end = f" end={_when(msg['end_ts'])}" if msg["end_ts"] is not None else ""
        print(f"alert {msg['state']:<8} stream={msg['stream']:<28} start={_when(msg['start_ts'])}{end} "
              f"peak={msg['peak']:.3f} {msg['severity']}{where}")

    def done(self, n_bad: int) -> bool:
        """Every reading's forecast and every bad record's dead letter arrived."""
        return self.outputs >= self.expected and self.dead >= n_bad


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def consume(consumer: KafkaConsumer, settings: Settings, tally: Tally, started: float, timeout_s: float) -> None:
    """Poll the output topics until every output arrived (then drain what is left) or the timeout passed."""
    k = settings.kafka
    kinds = {k.dead_letter_topic: "dead", k.alert_topic: "alert", k.forecast_topic: "forecast"}
    idle = 0
    while time.monotonic() - started < timeout_s and idle < 2:
        batch = consumer.poll(timeout_ms=500)
        for tp, records in batch.items():
            for r in records:
                tally.take(kinds[tp.topic], json.loads(r.value))
        idle = idle + 1 if tally.done(len(BAD_RECORDS)) and not batch else 0


def run_demo(bootstrap: str, files: list[Path], every: int = 1000, timeout_s: float = 300.0) -> int:
    """Replay `files` (one stream each) through a Service and print every `every`-th output and every alert, then
    the labelled windows alerted; 0 on success."""
    settings = demo_settings(bootstrap)
    k = settings.kafka
    error = await_broker(k, timeout_s)
    if error is not None:
        print(f"demo: no Kafka broker at {bootstrap} answered within {timeout_s:g}s ({error}); start one with "
              "`make kafka-up`, or name one with --bootstrap", file=sys.stderr)
        return 1
    ensure_topics(k, {k.input_topics[0]: {"num_partitions": 2}, k.forecast_topic: {}, k.dead_letter_topic: {},
                      k.alert_topic: {}, k.event_topic: {}})
    series = [load_series(p)[:3] for p in files]
    tally = Tally(sum(len(ts) for _, ts, _ in series), every, labelled_windows(files))
    print(f"demo: broker {bootstrap}; replaying {tally.expected} readings of {len(series)} NAB series "
          f"({', '.join(s for s, _, _ in series)}) into {k.input_topics[0]}")
    producer = make_producer(k, None)
    replay(producer, k.input_topics[0], series)
    for raw in BAD_RECORDS:
        producer.send(k.input_topics[0], key=b"broken-sensor", value=raw)
    producer.close()

    from streamer.service import Service  # torch: seconds to import, not spent when there is no broker

    service = Service(settings)
    print(f"demo: model {service.served.name} version {service.served.version} ({service.served.family})")
    thread = threading.Thread(target=service.run, name="streamer-serve", daemon=True)
    started = time.monotonic()
    thread.start()
    consumer = make_reader(k, [k.forecast_topic, k.dead_letter_topic, k.alert_topic])
    try:
        consume(consumer, settings, tally, started, timeout_s)
    finally:
        service.stop()
        thread.join(timeout=30)
        consumer.close()
    report(tally, service.stats.commits, time.monotonic() - started)
    return 0 if tally.outputs == tally.expected and tally.dead == len(BAD_RECORDS) else 1


def report(tally: Tally, commits: int, elapsed: float) -> None:
    """The demo's closing lines: each stream, throughput, and the alerts against NAB's labelled windows."""
    for name, msg in sorted(tally.last.items()):
        print(f"stream {name}: {msg['n']} readings, state carried across {commits} commits")
    print(f"demo: {tally.outputs} outputs and {tally.dead} dead letters in {elapsed:.1f}s "
          f"({tally.outputs / max(elapsed, 1e-9):.0f} readings/s end to end, exactly-once)")
    s = window_summary(tally.firing, tally.windows)
    print(f"demo: {len(tally.firing)} alerts fired ({tally.resolved} resolved); {s['alerted']} of {s['windows']} "
          f"labelled anomaly windows alerted, {s['outside']} of {s['alerts']} alerts on labelled series outside "
          f"every window")


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay shipped NAB series through the daemon on the local broker and print outputs as they arrive."""
    settings = load_settings()
    setup_logging("WARNING", settings.log_format)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # the demo's own output is the point; keep client chatter out
    bootstrap = args.bootstrap or settings.kafka.bootstrap_servers
    return run_demo(bootstrap, [Path(p) for p in args.files], every=args.every, timeout_s=args.timeout)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the demo command."""
    default_demo = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "data" / "nab"
                                          / "realAWSCloudwatch").glob("*.csv"))
    p = sub.add_parser("demo", help="replay real data through the daemon and print outputs",
                       description="Creates fresh topics on the broker, replays NAB series (one stream per "
                                   "file), serves them, prints outputs as they arrive, and stops by itself.")
    p.add_argument("files", nargs="*", default=default_demo, help="CSV series (default: shipped NAB files)")
    p.add_argument("--bootstrap", help="bootstrap servers (default: STREAMER_KAFKA__BOOTSTRAP_SERVERS)")
    p.add_argument("--every", type=int, default=1000, help="print every N-th output")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    p.set_defaults(func=cmd_demo)
