"""The run loop of `streamer serve`: consume readings, step the engine, publish outputs and state, commit.

One poll is one unit of work: its outputs, the state of every stream it changed (to the changelog)
and its consumer offsets are committed together (in one transaction when exactly-once is on), so a
crash replays at most the uncommitted poll, from the state that was committed with its offsets.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import torch
from kafka import ConsumerRebalanceListener

from streamer.changelog import ColdStore, restore_partitions
from streamer.config import Settings, resolve_device
from streamer.engine import Chunk, Engine
from streamer.errors import ConfigError, InvalidRecord
from streamer.models import ModelConfig, RecurrentModel, build_model
from streamer.schema import dead_letter, decode, encode
from streamer.transport import (
    Committer,
    OutRecord,
    ensure_topics,
    make_consumer,
    make_producer,
    next_offsets,
    partition_count,
)

log = logging.getLogger(__name__)


def model_from_settings(settings: Settings) -> RecurrentModel:
    """A freshly initialised, seeded model as the settings describe (until checkpoints are served)."""
    m = settings.model
    torch.manual_seed(m.seed)
    cfg = ModelConfig(family=m.family, n_features=m.n_features, hidden=m.hidden, layers=m.layers,
                      heads=("reconstruction",))
    return build_model(cfg).eval()


@dataclass
class LoopStats:
    """Counters of what the loop has done, for logs and tests."""

    polls: int = 0
    readings: int = 0
    outputs: int = 0
    dead_letters: int = 0
    commits: int = 0
    restored_records: int = 0
    cold_loads: int = 0


class _Rebalance(ConsumerRebalanceListener):
    """State follows partitions: drop revoked partitions' streams, restore assigned ones before processing."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked) -> None:
        # Every poll is committed before the next poll (where this runs), so nothing is pending here.
        self.service.forget_partitions({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned) -> None:
        self.service.restore({tp.partition for tp in assigned})


class Service:
    """Consumes readings, keeps each stream's hidden state across polls, and publishes one output per reading."""

    def __init__(self, settings: Settings, model: RecurrentModel | None = None) -> None:
        self.settings = settings
        self.device = resolve_device(settings.engine.device)
        self.model = (model or model_from_settings(settings)).to(self.device)
        self.model_name = f"{self.model.config.family}-h{self.model.config.hidden}-seed{settings.model.seed}"
        self.cold = ColdStore(settings.engine.state_dir)
        self.engine = Engine.from_model(self.model, capacity=settings.engine.capacity, device=self.device,
                                        idle_ttl=settings.engine.idle_ttl_s, on_evict=self._on_evict)
        self.partition_of: dict[str, int] = {}  # resident stream -> its input (and changelog) partition
        self.stats = LoopStats()
        self.stop_event = threading.Event()
        self.ready = threading.Event()

    def transactional_id(self) -> str:
        """Stable per instance, so a restarted instance fences and aborts its predecessor's open transaction."""
        k = self.settings.kafka
        return k.transactional_id or f"{k.group_id}-{k.instance_id or socket.gethostname()}"

    def _prepare_topics(self) -> None:
        """Check the inputs are co-partitioned and create missing output, dead-letter and changelog topics."""
        k = self.settings.kafka
        counts = {t: partition_count(k, t) for t in k.input_topics}
        if len(set(counts.values())) != 1:
            raise ConfigError(f"STREAMER_KAFKA__INPUT_TOPICS: topics must have equal partition counts, got {counts}")
        n = next(iter(counts.values()))
        ensure_topics(k, {
            k.output_topic: {}, k.dead_letter_topic: {},
            k.changelog: {"num_partitions": n, "configs": {"cleanup.policy": "compact"}},
        })
        have = partition_count(k, k.changelog)
        if have != n:
            raise ConfigError(f"STREAMER_KAFKA__CHANGELOG_TOPIC: {k.changelog} has {have} partitions, "
                              f"the input has {n}; they must be co-partitioned")

    def run(self) -> LoopStats:
        """Process until stop() is called; returns what was done."""
        k = self.settings.kafka
        self._prepare_topics()
        consumer = make_consumer(k)
        producer = make_producer(k, self.transactional_id() if k.exactly_once else None)
        try:
            committer = Committer(consumer, producer, k.exactly_once)
            consumer.subscribe(k.input_topics, listener=_Rebalance(self))
            log.info("serving", extra={"topics": k.input_topics, "group": k.group_id, "device": self.device,
                                       "model": self.model_name, "exactly_once": k.exactly_once})
            while not self.stop_event.is_set():
                batch = consumer.poll(timeout_ms=self.settings.engine.max_wait_ms,
                                      max_records=self.settings.engine.max_batch_readings)
                records = [r for recs in batch.values() for r in recs]
                if records:
                    committer.commit(self.process(records), next_offsets(records))
                    self.stats.commits += 1
                self.stats.polls += 1
        finally:
            self.ready.clear()
            consumer.close()
            producer.close(timeout=10)
            self.cold.close()
        log.info("stopped", extra=vars(self.stats))
        return self.stats

    def stop(self) -> None:
        """Ask the loop to finish its current poll, commit it and return."""
        self.stop_event.set()

    def restore(self, partitions: set[int]) -> None:
        """Load the changelog partitions of newly assigned input partitions into the cold store."""
        self.ready.clear()
        started = time.monotonic()
        n = restore_partitions(self.settings.kafka, self.settings.kafka.changelog, sorted(partitions),
                               self.cold)
        self.stats.restored_records += n
        log.info("restored state", extra={"partitions": sorted(partitions), "records": n,
                                          "seconds": round(time.monotonic() - started, 3)})
        self.ready.set()

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the state of streams whose partitions were revoked (their owner restores it from the changelog)."""
        gone = [s for s, p in self.partition_of.items() if p in partitions]
        self.engine.store.drop(gone)
        for s in gone:
            del self.partition_of[s]
        self.cold.drop_partitions(partitions)

    def _on_evict(self, stream: str, blob: bytes) -> None:
        # Its state is already in the changelog (every change is committed); keep a local copy for its return.
        self.cold.put_many([(stream, self.partition_of.pop(stream), blob)])

    def _load_cold(self, streams: list[str]) -> None:
        """Bring streams that are not resident back from the cold store before they are stepped."""
        store = self.engine.store
        for s in streams:
            if s not in store:
                found = self.cold.get(s)
                if found is not None:
                    store.restore(found[1])
                    self.stats.cold_loads += 1

    def process(self, records: list) -> list[OutRecord]:
        """Decode records, step every stream in one batch, and build output, state and dead-letter records."""
        k = self.settings.kafka
        n_features = self.model.config.n_features
        dead: list[OutRecord] = []
        out: list[OutRecord] = []
        chunks: list[Chunk] = []
        for r in records:
            try:
                d = decode(r.value, n_features, max_bytes=k.max_record_bytes)
                if r.key is not None and r.key != d.stream.encode():
                    raise InvalidRecord("key_mismatch", f"key {r.key!r} differs from stream {d.stream!r}")
            except InvalidRecord as exc:
                dead.append(OutRecord(k.dead_letter_topic, r.key, dead_letter(
                    r.value, exc.reason, exc.detail, r.topic, r.partition, r.offset)))
                continue
            chunks.append(Chunk(d.stream, d.ts, d.values))
            self.partition_of[d.stream] = r.partition
        self.stats.dead_letters += len(dead)
        if not chunks:
            return dead
        self._load_cold(list({c.stream: None for c in chunks}))
        results = self.engine.step(chunks, now=time.time())
        store = self.engine.store
        for res in results:
            extra = store.get_extra(res.stream) or {}
            seen = int(extra.get("n", 0))
            predictions = res.outputs["reconstruction"].tolist()
            key = res.stream.encode()
            for i, ts in enumerate(res.ts.tolist()):
                out.append(OutRecord(k.output_topic, key, encode({
                    "stream": res.stream, "ts": ts, "n": seen + i + 1,
                    "prediction": predictions[i], "model": self.model_name,
                })))
            store.set_extra(res.stream, {"n": seen + len(res.ts)})
        changed = [res.stream for res in results]
        state = [OutRecord(k.changelog, s.encode(), blob, self.partition_of[s])
                 for s, blob in zip(changed, store.snapshot_each(changed), strict=True)]
        self.stats.readings += sum(len(c.ts) for c in chunks)
        self.stats.outputs += len(out)
        return dead + out + state
