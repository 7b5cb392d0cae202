"""Helpers shared by the integration tests: read topics back, run `streamer serve` as a child process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from streamer.schema import forecasts_of


def collect(bootstrap: str, topics: list[str], want: int, timeout: float = 60.0, proc=None,
            expand: bool = True) -> dict[str, list[dict]]:
    """Read JSON records (read_committed) from `topics` until `want` arrived, the timeout, or `proc` died.

    With `expand`, a forecast record holding several readings (lists per field) counts and is returned as
    one dict per reading, so tests do not depend on how the daemon's polls grouped them.
    """
    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             isolation_level="read_committed", enable_auto_commit=False)
    got: dict[str, list[dict]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    while sum(map(len, got.values())) < want and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        for tp, recs in consumer.poll(timeout_ms=200).items():
            values = [json.loads(r.value) for r in recs]
            got[tp.topic].extend(per_reading(values) if expand else values)
    consumer.close()
    return got


def collect_all(bootstrap: str, topics: list[str], quiet_s: float = 3.0, timeout: float = 120.0,
                expand: bool = True) -> dict[str, list[dict]]:
    """Every JSON record (read_committed) on `topics`: read until none came for `quiet_s` seconds, so that a
    duplicate or an extra record shows up however many records there are to read first."""
    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             isolation_level="read_committed", enable_auto_commit=False)
    got: dict[str, list[dict]] = {t: [] for t in topics}
    started = last = time.monotonic()
    while time.monotonic() - last < quiet_s and time.monotonic() - started < timeout:
        for tp, recs in consumer.poll(timeout_ms=200).items():
            values = [json.loads(r.value) for r in recs]
            got[tp.topic].extend(per_reading(values) if expand else values)
            last = time.monotonic()
    consumer.close()
    return got


def serve_env(bootstrap: str, src: str, out: str, dead: str, **extra: str) -> dict[str, str]:
    """Environment for a `streamer serve` child with its own group, transactional id and changelog; the seeded
    random model unless `extra` names STREAMER_MODEL__CHECKPOINT."""
    run = uuid.uuid4().hex[:8]
    env = dict(os.environ,
               STREAMER_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
               STREAMER_KAFKA__INPUT_TOPICS=json.dumps([src]),
               STREAMER_KAFKA__FORECAST_TOPIC=out, STREAMER_KAFKA__DEAD_LETTER_TOPIC=dead,
               STREAMER_KAFKA__GROUP_ID=f"g-{run}", STREAMER_KAFKA__TRANSACTIONAL_ID=f"tx-{run}",
               STREAMER_ENGINE__DEVICE="cpu", STREAMER_LOG_FORMAT="json",
               STREAMER_METRICS__PORT="0", STREAMER_MODEL__CHECKPOINT="random")
    env.update(extra)
    return env


def start_serve(env: dict[str, str]) -> subprocess.Popen:
    """Start `python -m streamer.cli serve` with `env`; stderr (logs) is captured."""
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


class LogTail:
    """Reads a child's JSON log lines (stderr) in a thread, so a test can wait for one while it runs."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.entries: list[dict] = []
        self.text: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.text.append(line)
            if line.startswith("{"):
                try:
                    self.entries.append(json.loads(line))
                except ValueError:
                    pass

    def wait_for(self, predicate, timeout: float = 60.0) -> dict | None:
        """The first log entry satisfying `predicate`, waiting up to `timeout` seconds (None if none)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in list(self.entries):
                if predicate(entry):
                    return entry
            if self.proc.poll() is not None and not self.thread.is_alive():
                return None
            time.sleep(0.1)
        return None

    def finish(self, timeout: float = 60.0) -> list[dict]:
        """Wait for the child to exit and the reader to drain; all entries."""
        self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return self.entries


def per_reading(records: list[dict]) -> list[dict]:
    """Forecast records with lists per field (batch or chunk records) expanded into one dict per reading."""
    return [one for r in records for one in (forecasts_of(r) if "forecast" in r else [r])]


def first_rows(src: Path, dest: Path, rows: int) -> Path:
    """A copy of a CSV file's header and its first `rows` rows (a small slice of a real dataset)."""
    lines = src.read_text().splitlines()
    dest.write_text("\n".join(lines[: rows + 1]) + "\n")
    return dest


def small_occupancy_config(tmp_path: Path, train: dict) -> dict:
    """A pipeline config on the first 800 rows of datatraining.txt (Light, CO2), one thread: seconds to train."""
    import torch

    torch.set_num_threads(1)
    path = first_rows(Path(__file__).resolve().parents[1] / "data" / "occupancy" / "datatraining.txt",
                      tmp_path / "train.txt", 800)
    return {"data": {"path": str(path), "time_column": "date", "numeric": ["Light", "CO2"], "label": "Occupancy"},
            "split": {"val_fraction": 0.2, "test_fraction": 0.2},
            "model": {"family": "gru", "hidden": 4},
            "train": train}


def as_records(bodies: list[dict], timestamp: int = 1_700_000_000_000) -> list:
    """Reading bodies as consumer records of one partition (offsets from 0), for Service.process without a broker."""
    from types import SimpleNamespace

    return [SimpleNamespace(value=json.dumps(b).encode(), key=b["stream"].encode(), topic="in", partition=0,
                            offset=i, timestamp=timestamp) for i, b in enumerate(bodies)]


def send_records(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produce (key, value) records in order, allowing values of up to 4 MiB."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=4 << 20)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.close()


def assert_same_forecasts(got: list[dict], want: list[dict]) -> None:
    """The same streams with the same (ts, n) forecasts in order, the values within float32 rounding."""
    import numpy as np

    def by_stream(outputs: list[dict]) -> dict[str, list[tuple]]:
        out: dict[str, list[tuple]] = {}
        for o in outputs:
            out.setdefault(o["stream"], []).append((o["ts"], o["n"], o["forecast"]))
        return out

    g, w = by_stream(got), by_stream(want)
    assert sorted(g) == sorted(w)
    for s in w:
        assert [x[:2] for x in g[s]] == [x[:2] for x in w[s]], s
        np.testing.assert_allclose([x[2] for x in g[s]], [x[2] for x in w[s]], atol=1e-5)


def serve_until(env: dict, bootstrap: str, topics: list[str], want: int, timeout: float = 180) -> dict[str, list]:
    """Run `streamer serve` until `want` records are on `topics` (plus a wait for any extra), then SIGTERM."""
    proc = start_serve(env)
    tail = LogTail(proc)
    try:
        got = collect(bootstrap, topics, want, timeout=timeout, proc=proc)
        assert proc.poll() is None, "".join(tail.text)[-3000:]
        got = collect_all(bootstrap, topics)  # a duplicate would show up now
    finally:
        proc.send_signal(signal.SIGTERM)
        tail.finish(timeout=60)
    assert proc.returncode == 0, "".join(tail.text)[-3000:]
    return got


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:PORT/PATH; (0, '') when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def serve_in_thread(service, timeout: float = 30.0) -> threading.Thread:
    """Run `service` in a daemon thread; return once its HTTP endpoints are bound (when metrics are on)."""
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while service.settings.metrics.enabled and service.http is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """`streamer eval ...` arguments parsed as the CLI parses them (args.func runs the command)."""
    from lab.eval_cli import register

    parser = argparse.ArgumentParser(prog="streamer")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)
