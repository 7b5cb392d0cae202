"""Replay recorded series into Kafka as readings (or chunks of readings), at a rate or as fast as possible."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from streamer.errors import DataError
from streamer.schema import encode


def _parse_ts(text: str) -> int:
    """Milliseconds since the epoch from an integer, or an ISO-like 'YYYY-MM-DD HH:MM:SS' (UTC assumed)."""
    text = text.strip().strip('"')
    if text.lstrip("-").isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _parse_row(path: Path, line: int, header: list[str], row: list[str]) -> tuple[int, list[float]]:
    """One CSV row's timestamp and values, or a DataError naming the file, the line and the column."""
    if len(row) != len(header):
        raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
    try:
        ts = _parse_ts(row[0])
    except ValueError:
        raise DataError(f"{path}, line {line}: timestamp {row[0]!r} is neither an integer nor ISO 8601") from None
    values = []
    for name, text in zip(header[1:], row[1:], strict=True):
        try:
            values.append(float(text))
        except ValueError:
            raise DataError(f"{path}, line {line}, column {name!r}: {text!r} is not a number") from None
    return ts, values


def load_series(path: Path, stream: str | None = None, start_ms: int = 1_420_070_400_000,
                step_ms: int = 60_000) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
    """Read one stream: a CSV (timestamp column first, numeric channels after) or a NumPy .npy array [n, F]
    (rows stamped start_ms + i * step_ms, as the SMAP arrays carry no time); (stream, ts, values, channels)."""
    if Path(path).suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)  # never unpickle: a data file must not run code
        except OSError as exc:
            raise DataError(f"{path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # an object array (pickled) or a file that is not .npy
            raise DataError(f"{path}: not a numeric .npy array: {exc}") from None
        arr = arr.reshape(len(arr), -1).astype(np.float32)
        ts = start_ms + step_ms * np.arange(len(arr), dtype=np.int64)
        return stream or Path(path).stem, ts, arr, [f"c{i}" for i in range(arr.shape[1])]
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (expected a header: timestamp, then channels)")
            parsed = [_parse_row(Path(path), reader.line_num, header, r) for r in reader if r]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    ts = np.array([t for t, _ in parsed], dtype=np.int64)
    values = np.array([v for _, v in parsed], dtype=np.float32).reshape(len(parsed), len(header) - 1)
    return stream or Path(path).stem, ts, values, header[1:]


def interleave(series: list[tuple[str, np.ndarray, np.ndarray]]) -> Iterator[tuple[str, int, np.ndarray]]:
    """All readings of several series merged in event-time order (stable across series)."""
    order = np.concatenate([np.full(len(ts), i) for i, (_, ts, _) in enumerate(series)])
    rows = np.concatenate([np.arange(len(ts)) for _, ts, _ in series])
    times = np.concatenate([ts for _, ts, _ in series])
    for k in np.argsort(times, kind="stable"):
        name, ts, values = series[order[k]]
        yield name, int(ts[rows[k]]), values[rows[k]]


def replay(producer: KafkaProducer, topic: str, series: list[tuple[str, np.ndarray, np.ndarray]],
           rate: float = 0.0, chunk: int = 1, progress=None) -> int:
    """Produce every reading (grouped into chunks of `chunk` per stream) keyed by stream; return the count."""
    start = time.monotonic()
    sent = 0
    pending: dict[str, list[tuple[int, np.ndarray]]] = {}

    def flush_stream(name: str) -> None:
        rows = pending.pop(name)
        if chunk == 1:
            (t, v), = rows
            body = {"stream": name, "ts": t, "values": v.tolist()}
        else:
            body = {"stream": name, "ts": [t for t, _ in rows], "values": [v.tolist() for _, v in rows]}
        producer.send(topic, key=name.encode(), value=encode(body))

    for name, t, v in interleave(series):
        pending.setdefault(name, []).append((t, v))
        if len(pending[name]) >= chunk:
            flush_stream(name)
        sent += 1
        if progress is not None:
            progress.update(1)
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    for name in list(pending):
        flush_stream(name)
    producer.flush()
    return sent
