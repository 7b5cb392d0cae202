"""Datasets for training: CSV (long form or one stream per file) and NumPy loaders, feature specs, splits, z-scores."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamer.checkpoints import DERIVED, DERIVED_NUMERIC
from streamer.errors import ConfigError, DataError


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns feed the model: numeric channels, categorical codes (name, cardinality), an optional label."""

    numeric: tuple[str, ...]
    categorical: tuple[tuple[str, int], ...] = ()
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form stored in checkpoints."""
        return {
            "numeric": list(self.numeric),
            "categorical": [{"name": n, "cardinality": c} for n, c in self.categorical],
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of to_dict."""
        cats = tuple((str(c["name"]), int(c["cardinality"])) for c in d.get("categorical", []))
        return cls(tuple(str(n) for n in d["numeric"]), cats, d.get("label"))


@dataclass
class Series:
    """One stream, time-ordered: ts int64 [T] (ms since epoch, or row numbers), values float64 [T, F]."""

    stream: str
    ts: np.ndarray
    values: np.ndarray
    categorical: np.ndarray | None = None  # int64 [T, n_cat]
    labels: np.ndarray | None = None  # [T] (float 0/1 for events, int codes for symbols)
    sources: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def slice(self, a: int, b: int) -> Series:
        """Rows [a, b) as a new Series of the same stream."""
        cat = None if self.categorical is None else self.categorical[a:b]
        lab = None if self.labels is None else self.labels[a:b]
        return Series(self.stream, self.ts[a:b], self.values[a:b], cat, lab, dict(self.sources))


@dataclass
class Split:
    """A scored range [lo, hi) of a series; rows before lo may be read as causal context, never scored."""

    series: Series
    lo: int
    hi: int

    @property
    def n(self) -> int:
        """Number of scored rows."""
        return self.hi - self.lo


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _parse_time(s: str) -> int:
    try:
        return int(float(s))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.strip())
    except ValueError as exc:
        raise ConfigError(f"cannot parse timestamp {s!r} (want a number or ISO 8601)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV; rows with one field more than the header lose their first field (a row id)."""
    try:
        f = open(path, newline="")
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration as exc:
            raise ConfigError(f"{path}: empty file") from exc
        rows = []
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) == len(header) + 1:
                row = row[1:]
            if len(row) != len(header):
                raise ConfigError(f"{path}:{i}: {len(row)} fields but the header has {len(header)}")
            rows.append(row)
    return header, rows


def _derived(name: str, ts: np.ndarray) -> np.ndarray:
    secs = ts // 1000
    if name == "@hour":
        return (secs // 3600) % 24
    return (secs // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0


def derived_numeric(name: str, ts: np.ndarray) -> np.ndarray:
    """A numeric input computed from timestamps (ms): see DERIVED_NUMERIC."""
    secs = np.asarray(ts, dtype=np.int64) // 1000
    if name in ("@tod_sin", "@tod_cos"):
        ang = 2 * np.pi * ((secs % 86400) / 86400.0)
        return np.sin(ang) if name == "@tod_sin" else np.cos(ang)
    day = (secs // 86400 + 3) % 7  # Monday = 0
    if name in ("@dow_sin", "@dow_cos"):
        ang = 2 * np.pi * ((day + (secs % 86400) / 86400.0) / 7.0)
        return np.sin(ang) if name == "@dow_sin" else np.cos(ang)
    if name == "@weekend":
        return (day >= 5).astype(np.float64)
    raise ConfigError(f"unknown derived input {name!r} (known: {list(DERIVED_NUMERIC)})")


def _columns(path: Path, header: list[str], rows: list[list[str]], spec: FeatureSpec, time_column: str | None,
             name: str) -> Series:
    col = {h: i for i, h in enumerate(header)}
    tcol = time_column or header[0]
    needed = [tcol, *(c for c in spec.numeric if c not in DERIVED_NUMERIC),
              *(c for c, _ in spec.categorical if c not in DERIVED)]
    if spec.label:
        needed.append(spec.label)
    missing = [c for c in needed if c not in col]
    if missing:
        raise ConfigError(f"{path}: columns {missing} not in header {header}")
    ts = np.array([_parse_time(r[col[tcol]]) for r in rows], dtype=np.int64)
    try:
        values = np.array([[0.0 if c in DERIVED_NUMERIC else float(r[col[c]]) for c in spec.numeric] for r in rows],
                          dtype=np.float64)
    except ValueError as exc:
        raise ConfigError(f"{path}: non-numeric value in {list(spec.numeric)}: {exc}") from exc
    values = values.reshape(len(rows), len(spec.numeric))
    for j, c in enumerate(spec.numeric):
        if c in DERIVED_NUMERIC:
            values[:, j] = derived_numeric(c, ts)
    cat = None
    if spec.categorical:
        parts = []
        for c, card in spec.categorical:
            codes = _derived(c, ts) if c in DERIVED else np.array([int(float(r[col[c]])) for r in rows])
            if codes.size and (codes.min() < 0 or codes.max() >= card):
                raise ConfigError(f"{path}: categorical {c!r} has codes outside [0, {card})")
            parts.append(codes.astype(np.int64))
        cat = np.stack(parts, axis=1)
    labels = np.array([float(r[col[spec.label]]) for r in rows]) if spec.label else None
    order = np.argsort(ts, kind="stable")
    if not np.array_equal(order, np.arange(len(ts))):
        ts, values = ts[order], values[order]
        cat = None if cat is None else cat[order]
        labels = None if labels is None else labels[order]
    return Series(name, ts, values, cat, labels, {path.name: sha256_file(path)})


def load_csv(path: str | Path, spec: FeatureSpec, time_column: str | None = None,
             stream_column: str | None = None) -> list[Series]:
    """Series of a CSV: long form (one stream per value of stream_column) or one stream named after the file."""
    path = Path(path)
    header, rows = read_table(path)
    if stream_column is None:
        return [_columns(path, header, rows, spec, time_column, path.stem)]
    if stream_column not in header:
        raise ConfigError(f"{path}: stream column {stream_column!r} not in header {header}")
    i = header.index(stream_column)
    groups: dict[str, list[list[str]]] = {}
    for r in rows:
        groups.setdefault(r[i], []).append(r)
    return [_columns(path, header, g, spec, time_column, s) for s, g in groups.items()]


def load_npy(path: str | Path, spec: FeatureSpec | None = None) -> Series:
    """A (n, channels) array (SMAP layout) as one stream with row numbers as timestamps."""
    path = Path(path)
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 2:
        raise ConfigError(f"{path}: expected a (n, channels) array, got shape {arr.shape}")
    names = spec.numeric if spec else tuple(f"c{i}" for i in range(arr.shape[1]))
    if len(names) != arr.shape[1]:
        raise ConfigError(f"{path}: {arr.shape[1]} channels but the feature spec names {len(names)}")
    return Series(path.stem, np.arange(arr.shape[0], dtype=np.int64), arr.astype(np.float64), None, None,
                  {path.name: sha256_file(path)})


def split_rows(series: Series, bounds: dict[str, tuple[int, int]]) -> dict[str, Split]:
    """Named row ranges of one series (e.g. train/val/test); they must be time-ordered and not overlap."""
    out: dict[str, Split] = {}
    prev_hi = 0
    for name, (lo, hi) in bounds.items():
        if not 0 <= lo < hi <= len(series):
            raise ConfigError(f"split {name!r} rows [{lo}, {hi}) outside the series' {len(series)} rows")
        if lo < prev_hi:
            raise ConfigError(f"split {name!r} starts at {lo}, before the previous split ends ({prev_hi}): leakage")
        prev_hi = hi
        out[name] = Split(series, lo, hi)
    return out


def split_fractions(series: Series, val: float, test: float = 0.0) -> dict[str, Split]:
    """Time-ordered train/val(/test) split by fractions of the rows (the last rows are val, then test)."""
    n = len(series)
    n_test, n_val = int(round(n * test)), int(round(n * val))
    bounds = {"train": (0, n - n_val - n_test)}
    if n_val:
        bounds["val"] = (n - n_val - n_test, n - n_test)
    if n_test:
        bounds["test"] = (n - n_test, n)
    return split_rows(series, bounds)


@dataclass(frozen=True)
class Normalizer:
    """Per-channel z-score: (x - mean) / std, fitted on training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, splits: list[Split]) -> Normalizer:
        """Mean and population std over the scored rows of the given (training) splits."""
        x = np.concatenate([s.series.values[s.lo : s.hi] for s in splits])
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-12, std, 1.0))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """z-scored float32 copy."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-safe form stored in checkpoints."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Normalizer:
        """Inverse of to_dict."""
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


def fingerprint(splits: list[Split]) -> dict[str, Any]:
    """sha256 of the training rows (values, categorical codes, labels) and of each source file."""
    h = hashlib.sha256()
    files: dict[str, str] = {}
    for s in splits:
        part = s.series.slice(s.lo, s.hi)
        h.update(s.series.stream.encode() + b"\0")
        h.update(np.ascontiguousarray(part.values, dtype="<f8").tobytes())
        if part.categorical is not None:
            h.update(np.ascontiguousarray(part.categorical, dtype="<i8").tobytes())
        if part.labels is not None:
            h.update(np.ascontiguousarray(part.labels, dtype="<f8").tobytes())
        files.update(s.series.sources)
    return {"train_rows_sha256": h.hexdigest(), "files_sha256": dict(sorted(files.items()))}
