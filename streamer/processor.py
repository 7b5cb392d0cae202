"""The daemon's work on one poll, without a broker: records in; dead letters, forecasts, alerts, events and the
streams whose state changed out, gathered in `pending` until the runner commits them.

A poll's records are decoded (a bad one becomes a dead letter with its reason, whatever it raised), ordered (a
reading not after its stream's last one is refused, however polls fall), stepped through the engine as one batch,
and turned into outputs. Each stream's order and cadence state is explicit in its extras: "ts", its last
timestamp, and "n", its readings so far, written in one place after every step whatever heads the model has.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamer.config import Settings
from streamer.detection import StreamDetectors
from streamer.engine import Engine, StepResults
from streamer.errors import InvalidRecord
from streamer.model_source import ServedModel
from streamer.schema import ForecastEncoder, ForecastText, OutRecord, dead_letter, encode, parse

MAX_DEAD_LETTER_KEY = 1024  # a longer input key is replaced by its sha256 in the dead letter, which must fit
LATENCY_SAMPLES = 64  # record timestamps observed per commit: a sample, as observing every record is costly
_NO_EXTRA: dict = {}  # the extras of a stream without any (read only)


@dataclass
class Pending:
    """Work done since the last commit."""

    records: list[OutRecord] = field(default_factory=list)
    offsets: dict = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)  # stream -> changelog partition
    kinds: collections.Counter = field(default_factory=collections.Counter)
    reasons: collections.Counter = field(default_factory=collections.Counter)
    out_of_order: collections.Counter = field(default_factory=collections.Counter)
    readings: int = 0
    stamps: list[int] = field(default_factory=list)  # Kafka timestamps (ms) of a sample of input records

    def __bool__(self) -> bool:
        return bool(self.records or self.offsets)


class ProcessHooks(Protocol):
    """What the processor reports as it goes (the daemon's metrics implement it)."""

    def stepped(self, seconds: float, readings: int) -> None:
        """One engine step took `seconds` for `readings` readings."""

    def observe_model_health(self, version: str, errors: np.ndarray | None, scores: np.ndarray | None,
                             alerts: list[dict[str, Any]]) -> None:
        """The forecast errors, anomaly scores and alerts of one step."""


class NoHooks:
    """Reports nothing (unit tests, benchmarks)."""

    def stepped(self, seconds: float, readings: int) -> None:
        """Nothing."""

    def observe_model_health(self, version: str, errors: np.ndarray | None, scores: np.ndarray | None,
                             alerts: list[dict[str, Any]]) -> None:
        """Nothing."""


def single_partition(key: bytes, partitions: int) -> int:
    """The partitioner of a one-partition forecast topic (a runner on Kafka passes murmur2's)."""
    if partitions != 1:
        raise ValueError(f"{partitions} forecast partitions need the runner's partitioner")
    return 0


class Processor:
    """Decodes, orders and steps a poll's records; queues their outputs and changed streams in `pending`."""

    def __init__(self, settings: Settings, served: ServedModel, engine: Engine, detectors: StreamDetectors,
                 hooks: ProcessHooks | None = None,
                 partition_for: Callable[[bytes, int], int] = single_partition) -> None:
        self.settings = settings
        self.hooks = hooks or NoHooks()
        self.partition_for = partition_for
        self.pending = Pending()
        self.partition_of: dict[str, int] = {}  # resident stream -> its input (and changelog) partition
        self.firing: set[str] = set()  # streams with an open anomaly alert
        self.forecast_partitions = 1
        self._forecast_keys: dict[str, tuple[bytes, int, str]] = {}  # stream -> its forecasts' key, partition, head
        self.use(served, engine, detectors)

    def use(self, served: ServedModel, engine: Engine, detectors: StreamDetectors) -> None:
        """Serve this model, engine and detectors from the next poll on (a reload)."""
        self.served, self.engine, self.detectors = served, engine, detectors

    def set_forecast_partitions(self, n: int) -> None:
        """The forecast topic's partition count (keys are placed as Kafka's default partitioner would)."""
        self.forecast_partitions = n
        self._forecast_keys.clear()

    def take(self) -> Pending:
        """The work since the last call, for the runner to commit; a fresh one collects from now on."""
        done, self.pending = self.pending, Pending()
        return done

    def clear_streams(self) -> None:
        """Forget which streams are resident and firing (their states were dropped)."""
        self.partition_of.clear()
        self.firing.clear()

    def reset(self) -> None:
        """Forget the work since the last commit and every stream (a rewind after a failed commit)."""
        self.pending = Pending()
        self.clear_streams()

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the resident state of the streams of revoked partitions (the owner restores it)."""
        gone = [s for s, p in self.partition_of.items() if p in partitions]
        self.engine.store.drop(gone)
        for s in gone:
            del self.partition_of[s]
            self.firing.discard(s)

    # -- one poll -----------------------------------------------------------------------------------
    def process(self, records: list) -> None:
        """Decode records, step every stream in one batch, and queue forecasts, state and dead letters."""
        p = self.pending
        step = max(1, len(records) // LATENCY_SAMPLES)
        p.stamps.extend(r.timestamp for r in records[::step] if r.timestamp is not None and r.timestamp >= 0)
        wall = time.time()
        groups = self._in_order(self._decode(records, wall), wall)
        if not groups:
            return
        results = self._step(groups, wall)
        seen = self._advance_streams(results)
        self._queue_forecasts(results, {s: g[2] for s, g in groups.items()}, seen)
        if self.detectors.active:
            k = self.settings.kafka
            found = self.detectors.step(results, self.engine.store)
            self.hooks.observe_model_health(self.served.version, found.errors, found.scores, found.alerts)
            self.queue_messages(found.alerts, k.alert_topic, "alert")
            self.queue_messages(found.events, k.event_topic, "event")
        for s in results.streams:
            p.changed[s] = self.partition_of[s]
        p.readings += int(results.offsets[-1])

    def reject(self, r: Any, reason: str, detail: str) -> None:
        """A record's dead letter: its reason, where it came from, and (a bounded prefix of) its bytes."""
        k, p = self.settings.kafka, self.pending
        key = r.key if r.key is None or len(r.key) <= MAX_DEAD_LETTER_KEY else hashlib.sha256(r.key).digest()
        p.records.append(OutRecord(k.dead_letter_topic, key, dead_letter(
            r.value, reason, detail, r.topic, r.partition, r.offset, k.dead_letter_original_bytes)))
        p.reasons[reason] += 1

    def _decode(self, records: list, wall: float) -> list[tuple[Any, str, list[int], list[list[float]], bool]]:
        """(record, stream, timestamps, rows, chunk?) of every valid record; the others are dead-lettered."""
        e, k = self.settings.engine, self.settings.kafka
        ts_range = (e.min_ts_ms, int(wall * 1000) + int(e.max_future_s * 1000))
        n_features, channels = self.served.model.config.n_features, self.served.channels
        decoded, partition_of = [], self.partition_of
        for r in records:
            try:
                stream, ts, rows, is_chunk = parse(r.value, n_features, channels, k.max_record_bytes, ts_range)
                if r.key is not None and r.key != stream.encode():
                    raise InvalidRecord("key_mismatch", f"key {r.key!r} differs from stream {stream!r}")
            except InvalidRecord as exc:
                self.reject(r, exc.reason, exc.detail)
                continue
            except Exception as exc:  # noqa: BLE001 (a poison record costs one dead letter, whatever it raises)
                self.reject(r, "undecodable", f"{type(exc).__name__}: {exc}")
                continue
            decoded.append((r, stream, ts, rows, is_chunk))
            partition_of[stream] = r.partition
        return decoded

    def _in_order(self, decoded: list,
                  wall: float) -> dict[str, tuple[list[int], list[list[float]], list[tuple[int, bool]]]]:
        """Per stream: its timestamps, rows, and (readings, chunk?) of each accepted record, in arrival order.

        Arrival order decides: a record whose first reading is not after its stream's last one is refused."""
        p, store = self.pending, self.engine.store
        streams = list(dict.fromkeys(d[1] for d in decoded))
        store.slots(streams, wall)  # resident (and loaded from the cold store) before their last ts is read
        get_extra = store.get_extra
        last = {s: (get_extra(s) or _NO_EXTRA).get("ts", -1) for s in streams}
        groups: dict[str, tuple[list[int], list[list[float]], list[tuple[int, bool]]]] = {}
        for r, stream, ts, rows, is_chunk in decoded:
            first, prev = ts[0], last[stream]
            if first <= prev:
                kind = "duplicate" if first == prev else "late"
                p.out_of_order[kind] += 1
                self.reject(r, "duplicate_ts" if kind == "duplicate" else "out_of_order",
                            f"timestamp {first} is not after the stream's last one, {prev}")
                continue
            last[stream] = ts[-1]
            g = groups.get(stream)
            if g is None:
                groups[stream] = g = ([], [], [])
            g[0].extend(ts)
            g[1].extend(rows)
            g[2].append((len(ts), is_chunk))
        return groups

    def _step(self, groups: dict[str, tuple[list[int], list[list[float]], Any]], wall: float) -> StepResults:
        """Whole-batch arrays grouped by stream (each stream's readings in time order), normalised once, stepped."""
        served, n_features = self.served, self.served.model.config.n_features
        order = list(groups)
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum([len(g[0]) for g in groups.values()], out=offsets[1:])
        chain = itertools.chain.from_iterable
        ts_arr = np.fromiter(chain(g[0] for g in groups.values()), dtype=np.int64, count=int(offsets[-1]))
        # Every row has n_features values (parse checked them): fromiter is much faster than np.array of the rows.
        values = (np.fromiter(chain(chain(g[1] for g in groups.values())), dtype=np.float32,
                              count=int(offsets[-1]) * n_features).reshape(-1, n_features) - served.mean) / served.std
        started = time.perf_counter()
        results = self.engine.step_grouped(order, offsets, ts_arr, values, now=wall)
        self.hooks.stepped(time.perf_counter() - started, int(results.offsets[-1]))
        return results

    def _advance_streams(self, results: StepResults) -> list[int]:
        """Each stepped stream's reading count and last timestamp, which the order check and the forecast cadence
        read, whatever outputs the model has; returns each stream's count before this step."""
        extra_for, ts = self.engine.store.extra_for, results.ts
        offsets = results.offsets.tolist()
        before = []
        for stream, a, b in zip(results.streams, offsets[:-1], offsets[1:], strict=True):
            extra = extra_for(stream)
            n = extra.get("n", 0)
            before.append(n)
            extra["n"] = n + b - a
            extra["ts"] = int(ts[b - 1])
        return before

    def _queue_forecasts(self, results: StepResults, records_of: dict[str, list[tuple[int, bool]]],
                         seen_before: list[int]) -> None:
        """The forecast records of a step (ForecastEncoder decides which readings and how they are grouped)."""
        served = self.served
        if served.head is None:  # an event-only model: its events are its outputs
            return
        y = results.outputs[served.head]
        text = ForecastText(y.reshape(y.shape[0], -1, served.model.config.n_features) * served.std + served.mean)
        offsets, ts_all = results.offsets.tolist(), results.ts.tolist()
        o, topic, out = self.settings.output, self.settings.kafka.forecast_topic, self.pending.records
        enc = ForecastEncoder(served.name, served.version, o.forecast_every, o.forecast_records == "input",
                              o.max_forecast_record_bytes)
        every = enc.every
        published, keys = 0, self._forecast_keys
        for stream, a, b, seen in zip(results.streams, offsets[:-1], offsets[1:], seen_before, strict=True):
            if enc.by_input:
                spans, start = [], a  # (first row, end row, chunk?) of each input record of the stream
                for size, is_chunk in records_of[stream]:
                    spans.append((start, start + size, is_chunk))
                    start += size
                key, part, head = keys.get(stream) or self._forecast_key(stream)
                values = enc.per_input(text, head, ts_all, spans, a, seen)
            else:
                first = a + (every - seen % every) - 1  # its first reading on the cadence
                if first >= b:
                    continue
                key, part, head = keys.get(stream) or self._forecast_key(stream)
                values = enc.per_stream(text, head, ts_all, first, b, a, seen)
            for v in values:
                out.append(OutRecord(topic, key, v, part))
            published += len(values)
        self.pending.kinds["forecast"] += published

    def _forecast_key(self, stream: str) -> tuple[bytes, int, str]:
        """A stream's forecast record key, partition and JSON head; remembered (murmur2 and json.dumps would
        otherwise run for every stream of every batch), and forgotten wholesale past the state capacity, so it
        stays bounded."""
        found = self._forecast_keys.get(stream)
        if found is None:
            if len(self._forecast_keys) >= self.settings.engine.capacity:
                self._forecast_keys.clear()
            key = stream.encode()
            found = self._forecast_keys[stream] = (key, self.partition_for(key, self.forecast_partitions),
                                                   ForecastEncoder.head(stream))
        return found

    def queue_messages(self, messages: list[dict], topic: str, kind: str) -> None:
        """Alert or event messages to publish, keyed by stream; tracks which alerts are open."""
        p = self.pending
        for msg in messages:
            p.records.append(OutRecord(topic, msg["stream"].encode(), encode(msg)))
            if kind == "alert":
                if msg["state"] == "firing":
                    self.firing.add(msg["stream"])
                elif msg["state"] == "resolved":
                    self.firing.discard(msg["stream"])
        p.kinds[kind] += len(messages)

    def check_silence(self, now_ms: int) -> None:
        """Publish 'silent' events for resident streams whose readings stopped (their state changes too)."""
        events, changed = self.detectors.check_silence(self.engine.store, now_ms)
        self.queue_messages(events, self.settings.kafka.event_topic, "event")
        for s in changed:
            self.pending.changed[s] = self.partition_of[s]
