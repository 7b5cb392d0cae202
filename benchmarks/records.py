"""Record decoding alone: kafka-python's PartitionRecords against streamer.kafka.fast_paths, per fetched record.

The daemon's consumer decodes fetched record batches with streamer.kafka.fast_paths; this measures both on the
same bytes (batches of the benchmark's single-reading records, no broker), medians of --reps runs.

Usage: python -m benchmarks.records [--json] [--reps N] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from kafka.consumer.fetcher import Fetcher
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from streamer.kafka.fast_paths import FastPartitionRecords

TP = TopicPartition("readings", 0)


def fetched_bytes(n_batches: int, per_batch: int) -> bytes:
    """Record batches as a fetch returns them: single readings of 1000 streams, keyed by stream."""
    out, offset, ts = b"", 0, 1_732_712_345_000
    for _ in range(n_batches):
        b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 24, offset=offset)
        for i in range(per_batch):
            s = f"sensor-{(offset + i) % 1000:06d}"
            b.append(timestamp=ts + offset + i, key=s.encode(), headers=[],
                     value=f'{{"stream":"{s}","ts":{ts + offset + i},"values":[{(offset + i) / 7:.5f}]}}'.encode())
        b.close()
        out += bytes(b.buffer())
        offset += per_batch
    return out


def time_decoding(cls, data: bytes, n: int, reps: int) -> float:
    """Median microseconds per record to decode everything in `data` (n records) with `cls`."""
    runs = []
    for _ in range(reps):
        started = time.perf_counter()
        part = cls(0, TP, MemoryRecords(data), check_crcs=True)
        got = 0
        while part:
            chunk = part.take(20_000)
            if not chunk:
                break
            got += len(chunk)
        runs.append((time.perf_counter() - started) / n * 1e6)
        assert got == n, (got, n)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    """Print stock and fast decoding costs (and one JSON object on the last line with --json)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.records", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions (median reported)")
    ap.add_argument("--batch", type=int, default=2000, help="records per record batch (40 batches)")
    args = ap.parse_args(argv)
    n_batches = 40
    data = fetched_bytes(n_batches, args.batch)
    n = n_batches * args.batch
    stock = time_decoding(Fetcher.PartitionRecords, data, n, args.reps)
    fast = time_decoding(FastPartitionRecords, data, n, args.reps)
    out = {"records": n, "bytes_per_record": len(data) / n, "stock_us_per_record": stock,
           "fast_us_per_record": fast, "speedup": stock / fast, "reps": args.reps}
    print(f"decoding {n:,} fetched records ({out['bytes_per_record']:.0f} B each), medians of {args.reps}:")
    print(f"  kafka-python PartitionRecords   {stock:6.2f} us/record")
    print(f"  streamer.kafka.fast_paths          {fast:6.2f} us/record   ({stock / fast:.1f}x)")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
