"""Restarts under a backlog: the changelog's size after a sustained load, then the restore and the drain.

  1. `streamer serve` (default settings, exactly-once) runs while N readings of S streams are produced as fast as
     the producer goes; the changelog's records and bytes on disk are read when the daemon has caught up, and
     again after `--settle` seconds (the broker's log cleaner compacts closed segments).
  2. The daemon stops; a backlog of N more readings is produced; the daemon starts again with the same group:
     restore_s (the "restored state" log line: reading the changelog while the group consumer keeps polling),
     start_to_ready_s (process start to /readyz 200) and drain_s (process start to the whole backlog consumed).
The broker is started here (deploy/local-kafka/kafka.sh) so that the changelog's size on disk can be read.

Usage: python -m benchmarks.restore [--quick] [--json] [--streams S] [--readings N] [--settle SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from benchmarks.e2e import Serve, create_topics, fast_producer, log, partitioner, stream_ids
from lab.local_kafka import LocalKafka, free_port_pair
from streamer.kafka.fast_paths import RecordAppender
from streamer.schema import OutRecord

PARTITIONS = 4


def produce(bootstrap: str, topic: str, n_readings: int, n_streams: int, start_ms: int, rate: float = 0) -> float:
    """N single readings round-robin over S streams, stamped from `start_ms` on, at `rate` per second (0: as fast
    as the producer goes); the seconds it took."""
    ids = stream_ids(n_streams)
    keys = [s.encode() for s in ids]
    producer = fast_producer(bootstrap)
    parts = partitioner(topic, producer, keys)
    appender = RecordAppender(producer)
    started = time.perf_counter()
    step = max(1, int(rate / 10)) if rate else 20_000  # paced: a tenth of a second's readings at a time
    for lo in range(0, n_readings, step):
        if rate:
            ahead = started + lo / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        batch = []
        for i in range(lo, min(n_readings, lo + step)):
            key = keys[i % n_streams]
            value = b'{"stream":"%s","ts":%d,"values":[%d.25]}' % (key, start_ms + i, i % 13)
            batch.append(OutRecord(topic, key, value, parts[i % n_streams]))
        appender.append(batch)
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def scrape(port: int) -> dict[str, float]:
    """Every sample of the daemon's /metrics ({} while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def ready(port: int) -> bool:
    """/readyz answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.HTTPError, OSError):
        return False


def wait_consumed(serve: Serve, port: int, want: float, timeout: float) -> float:
    """Seconds from the daemon's start until it consumed `want` readings (raises past the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not serve.alive():
            raise RuntimeError(f"the daemon died:\n{serve.tail()}")
        if scrape(port).get("streamer_readings_consumed_total", 0) >= want:
            return time.perf_counter() - serve.started
        time.sleep(0.2)
    raise RuntimeError(f"{want} readings not consumed in {timeout} s:\n{serve.tail()}")


def changelog_size(broker: LocalKafka, topic: str) -> dict[str, int]:
    """Records (end minus start offsets) and bytes of log segments on disk, summed over the partitions."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    consumer.close()
    files = [f for p in range(PARTITIONS) for f in (broker.data_dir / "kraft-logs" / f"{topic}-{p}").glob("*.log")]
    return {"records": sum(end[tp] - begin[tp] for tp in tps), "bytes": sum(f.stat().st_size for f in files),
            "segments": len(files)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The two phases on a broker of this run; every figure of the report."""
    broker = LocalKafka()
    bootstrap = broker.up()
    try:
        run_id = uuid.uuid4().hex[:8]
        src, out, dead = f"restore-in-{run_id}", f"restore-out-{run_id}", f"restore-dead-{run_id}"
        create_topics(bootstrap, [src], PARTITIONS)
        port = free_port_pair()
        group = f"restore-{run_id}"
        settings = {"STREAMER_KAFKA__GROUP_ID": group, "STREAMER_KAFKA__TRANSACTIONAL_ID": f"tx-{run_id}",
                    "STREAMER_METRICS__PORT": str(port)}
        if args.kafka_defaults:  # the changelog as Kafka's defaults would make it (what the daemon created before)
            settings.update(STREAMER_KAFKA__CHANGELOG_SEGMENT_BYTES=str(2**30),
                            STREAMER_KAFKA__CHANGELOG_SEGMENT_MS=str(7 * 86_400_000),
                            STREAMER_KAFKA__CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO="0.5")
        start_ms = int(time.time() * 1000) - 2 * args.readings - 600_000
        serve = Serve(bootstrap, src, out, dead, True, settings, broker.pid())
        log(f"load: {args.readings} readings of {args.streams} streams at {args.rate}/s while the daemon runs")
        load_started = time.perf_counter()
        produce_s = produce(bootstrap, src, args.readings, args.streams, start_ms, args.rate)
        wait_consumed(serve, port, args.readings, timeout=1800)
        load_s = time.perf_counter() - load_started
        changelog = f"{group}-state-changelog"
        after_load = changelog_size(broker, changelog)
        log(f"changelog after the load: {after_load}; waiting {args.settle} s for the log cleaner")
        time.sleep(args.settle)
        settled = changelog_size(broker, changelog)
        load_stats = serve.stop()
        log(f"backlog: {args.readings} readings with the daemon stopped")
        produce(bootstrap, src, args.readings, args.streams, start_ms + args.readings)
        serve = Serve(bootstrap, src, out, dead, True, settings, broker.pid())
        while not ready(port):
            if not serve.alive() or time.perf_counter() - serve.started > 900:
                raise RuntimeError(f"not ready:\n{serve.tail()}")
            time.sleep(0.05)
        start_to_ready_s = time.perf_counter() - serve.started
        drain_s = wait_consumed(serve, port, args.readings, timeout=1800)
        restored = serve.wait_for("restored state", timeout=10) or {}
        metrics = scrape(port)
        log_text = "".join(serve.text)
        serve.stop()
        return {
            "streams": args.streams, "load_readings": args.readings, "load_rate": args.rate,
            "changelog_configs": "kafka defaults" if args.kafka_defaults else "daemon defaults",
            "load_s": round(load_s, 2),
            "load_per_s": round(args.readings / load_s), "produce_s": round(produce_s, 2),
            "load_commits": load_stats.get("commits"), "load_polls": load_stats.get("polls"),
            "changelog_records_after_load": after_load["records"], "changelog_bytes_after_load": after_load["bytes"],
            "changelog_segments_after_load": after_load["segments"], "settle_s": args.settle,
            "changelog_records": settled["records"], "changelog_bytes": settled["bytes"],
            "changelog_segments": settled["segments"],
            "backlog_readings": args.readings, "restore_s": restored.get("seconds"),
            "restored_records": restored.get("records"), "start_to_ready_s": round(start_to_ready_s, 2),
            "drain_s": round(drain_s, 2), "drain_per_s": round(args.readings / (drain_s - start_to_ready_s)),
            "rebalances_assigned": metrics.get('streamer_rebalances_total{event="assigned"}'),
            "heartbeat_expired": "Heartbeat session expired" in log_text, "rewinds": log_text.count("rewinding"),
        }
    finally:
        broker.down()


def table(r: dict[str, Any]) -> str:
    """The report as aligned lines."""
    mib = 2**20
    return "\n".join([
        f"changelog configs: {r['changelog_configs']}",
        f"load: {r['load_readings']:,} readings of {r['streams']} streams in {r['load_s']} s ({r['load_per_s']:,}/s)",
        f"changelog after the load: {r['changelog_records_after_load']:,} records, "
        f"{r['changelog_bytes_after_load'] / mib:.1f} MiB in {r['changelog_segments_after_load']} segments",
        f"changelog {r['settle_s']} s later: {r['changelog_records']:,} records, {r['changelog_bytes'] / mib:.1f} MiB "
        f"in {r['changelog_segments']} segments",
        f"restart on a backlog of {r['backlog_readings']:,}: restore {r['restore_s']} s "
        f"({r['restored_records']:,} records), ready after {r['start_to_ready_s']} s, drained after {r['drain_s']} s "
        f"({r['drain_per_s']:,}/s once ready)",
        f"assignments {r['rebalances_assigned']}, heartbeat expired: {r['heartbeat_expired']}, rewinds {r['rewinds']}",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures (a table, or one JSON object with --json)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restore", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams (default 1000)")
    parser.add_argument("--readings", type=int, default=2_000_000, help="readings of the load and of the backlog")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to wait for compaction after the load")
    parser.add_argument("--rate", type=float, default=20_000.0,
                        help="readings per second of the load (default 20000, which the daemon keeps up with: small "
                        "frequent commits, the changelog's worst case); 0: as fast as the producer goes")
    parser.add_argument("--kafka-defaults", action="store_true",
                        help="create the changelog with Kafka's default segment and cleaning configs, for comparison")
    parser.add_argument("--quick", action="store_true", help="200k readings, 20 s settle")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.readings, args.settle = 200_000, 20.0
    result = run(args)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
