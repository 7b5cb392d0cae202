"""The run loop of `streamer serve`: consume readings, step the engine, publish forecasts and state, commit.

Work is committed every commit interval: the outputs of the polls since the last commit, the state of
every stream they changed (to the changelog) and the consumer offsets go together (in one
transaction when exactly-once is on). A crash replays the uncommitted work from the state that was
committed with its offsets; a Kafka failure (broker outage, fencing) does the same in process: the
loop rewinds to the last commit, backs off, reconnects and restores.
"""

from __future__ import annotations

import logging
import threading
import time

from streamer.accounting import CommitAccounting
from streamer.cold_store import ColdSpill, ColdStore
from streamer.committing import Commits, CommitSink, state_records
from streamer.config import Settings, resolve_device, resolve_threads
from streamer.detection import stream_detectors
from streamer.engine import Engine, initial_state_of
from streamer.errors import CheckpointError, ConfigError
from streamer.heap import BatchCollector
from streamer.kafka.connecting import input_topics
from streamer.kafka.session import KafkaTransport
from streamer.liveness import Liveness, LoopStats
from streamer.metrics import HealthServer, Metrics
from streamer.model_source import (
    ServedModel,
    check_servable,
    load_checkpoint,
    new_checkpoint,
    served_model,
    wrap_model,
)
from streamer.models import RecurrentModel
from streamer.processor import Pending, Processor
from streamer.restoring import Restoration
from streamer.schema import OutRecord
from streamer.transport import Session, Transport
from streamer.tuning import serving_process

log = logging.getLogger(__name__)
LAG_EVERY_S = 2.0  # consumer lag is asked of the broker this often: a metadata round trip, not worth every batch


class Service:
    """Consumes readings, keeps each stream's state across polls, publishes forecasts; exactly once."""

    def __init__(self, settings: Settings, model: RecurrentModel | None = None,
                 metrics: Metrics | None = None, collector: BatchCollector | None = None,
                 http: HealthServer | None = None, transport: Transport | None = None) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.transport = transport or KafkaTransport(settings.kafka)
        self.collector = collector  # runs the cyclic garbage collector between batches (the daemon's process)
        self.device = resolve_device(settings.engine.device)
        self.threads = resolve_threads(settings.engine.threads)
        self.metrics = metrics or Metrics()
        self.served = (wrap_model(model, f"{model.config.family}-h{model.config.hidden}", "code")
                       if model is not None else served_model(settings, self.device))
        self.cold = ColdStore(settings.engine.state_dir)
        self.stats = LoopStats()
        self.spill = ColdSpill(self.cold, lambda: self.partition_of, self._cold_loaded)
        self.engine = self._make_engine(self.served)
        self.detectors = stream_detectors(self.settings, self.served)
        self.processor = Processor(settings, self.served, self.engine, self.detectors, hooks=self.metrics,
                                   partition_for=self.transport.partition_for)
        self.ready = threading.Event()
        self.liveness = Liveness()
        self.restoration = Restoration(settings, self.metrics, self.liveness, self.stats, self._set_ready)
        self._lag_due = False
        self.http = http  # the endpoints, when opened before the service (else run() opens them)
        self.accounting = CommitAccounting(settings.metrics, self.metrics, self.liveness, self.stats)
        self.commits = Commits(self._account, self.accounting.failed)
        self.metrics.set_model(self.served.name, self.served.version, self.served.family)
        if http is not None:
            http.bind(self.alive, self.ready.is_set, self.not_ready_reason)

    @property
    def failed_commits_in_row(self) -> int:
        """Commits failed in a row on the same work (0 after a success)."""
        return self.liveness.failed_commits_in_row

    @property
    def partition_of(self) -> dict[str, int]:
        """Resident stream -> its input (and changelog) partition (the processor's)."""
        return self.processor.partition_of

    # -- model --------------------------------------------------------------------------------------
    def _make_engine(self, served: ServedModel, store=None) -> Engine:
        if store is not None:  # a new model of the same architecture: its s0 for streams that start from now
            store.initial = initial_state_of(served.model.to(self.device))
            return Engine(served.model, store, device=self.device)
        e = self.settings.engine
        return Engine.from_model(served.model, capacity=e.capacity, device=self.device, idle_ttl=e.idle_ttl_s,
                                 on_evict=self.spill.evicted, on_miss=self.spill.missed)

    def _cold_loaded(self) -> None:
        self.stats.cold_loads += 1

    def maybe_reload(self) -> None:
        """Serve a new checkpoint written at the configured path; keep states when the architecture matches."""
        path = new_checkpoint(self.settings, self.served)
        if path is None:
            return
        self.metrics.reload_attempts.inc()
        try:
            new = check_servable(load_checkpoint(path, self.device), self.settings)
        except (CheckpointError, ConfigError, OSError) as exc:  # e.g. caught mid-write: try again next interval
            self.metrics.reload_failures.inc()
            log.warning("new checkpoint not loaded: %s", exc)
            return
        self.commit(wait=True)  # the outputs so far belong to the old model
        keep = new.same_architecture(self.served)
        if keep:
            self.engine = self._make_engine(new, store=self.engine.store)
        else:  # old states mean nothing to the new model: every stream starts again (and warms up)
            self.engine.store.clear()
            self.cold.clear()
            self.processor.clear_streams()
            self.engine = self._make_engine(new)
            self.accounting.evictions_seen = 0
        self.served = new
        self.detectors = stream_detectors(self.settings, new)
        self.processor.use(new, self.engine, self.detectors)
        self.stats.reloads += 1
        self.metrics.set_model(new.name, new.version, new.family)
        log.info("model reloaded", extra={"model": new.name, "version": new.version, "states_kept": keep})

    # -- topics and the loop ------------------------------------------------------------------------
    def input_topics(self) -> list[str]:
        """The input topics: the configured list, or the existing topics matching the pattern."""
        return input_topics(self.settings.kafka)

    def alive(self) -> bool:
        """/healthz: the loop (or, at start-up, the wait for the cluster) turned recently, made progress when there
        was work (a restore, or input lag), and its commits are not failing over and over."""
        return self.liveness.alive(self.settings.metrics)

    def not_ready_reason(self) -> str:
        """Why /readyz answers 503: connecting (and the last error), waiting for partitions, restoring their state
        (and the records left), a Kafka failure."""
        return self.liveness.reason

    def run(self) -> LoopStats:
        """Open the HTTP endpoints, wait for the cluster, then process until stop() is called, surviving Kafka
        failures; returns what was done. Raises KafkaUnavailable past STREAMER_KAFKA__STARTUP_TIMEOUT_S."""
        m = self.settings.metrics
        if m.enabled and self.http is None:
            self.http = HealthServer(self.metrics, m.host, m.port, self.alive, self.ready.is_set,
                                     self.not_ready_reason).start()
            log.info("http endpoints", extra={"host": m.host, "port": self.http.port})
        try:
            forecast_partitions = self.transport.connect(self.stop_event, self.liveness)  # None: stopped first
            if forecast_partitions is not None:  # the processor partitions forecasts as the forecast topic is
                self.processor.set_forecast_partitions(forecast_partitions)
                with serving_process(self.threads, self.settings.engine.switch_interval_ms):
                    self._sessions()
        finally:
            self.liveness.reason = "stopped"
            self._set_ready(False)
            if self.http is not None:
                self.http.stop()
            self.cold.close()
        log.info("stopped", extra={**vars(self.stats), **self.stats.timeline()})
        return self.stats

    def _sessions(self) -> None:
        """Sessions with the cluster until stopped: a Kafka failure rewinds to the last commit, backs off, retries."""
        backoff = self.transport.backoff_s[0]
        while not self.stop_event.is_set():
            try:
                self._serve()
                return
            except self.transport.failures as exc:
                self.stats.rewinds += 1
                self.liveness.reason = f"kafka failure, retrying in {backoff:g}s: {exc!r}"
                log.warning("kafka failure, rewinding to the last commit", extra={
                    "error": repr(exc), "retry_in_s": backoff})
                self._rewind()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.transport.backoff_s[1])

    def _serve(self) -> None:
        """One session with the cluster: clients, subscription, the poll-process-commit loop."""
        k, e = self.settings.kafka, self.settings.engine
        self.liveness.reason = f"joining group {k.group_id}: waiting for partitions and their state"
        self.liveness.progressed()
        session = self.transport.open_session(self.cold, self.stop_event)
        self.restoration.open(session.restorer)
        try:
            self.commits.sink = session.committer
            self.metrics.fast_paths(session.fast_paths())
            session.subscribe(self.on_revoked, self.on_assigned)
            log.info("serving", extra={"topics": k.input_pattern or k.input_topics, "group": k.group_id,
                                       "device": self.device, "threads": self.threads, "model": self.served.name,
                                       "version": self.served.version, "exactly_once": k.exactly_once})
            timers = dict.fromkeys(("commit", "lag", "reload", "silence"), time.monotonic())
            max_records = min(e.max_batch_readings, e.capacity)
            while not self.stop_event.is_set():
                now = self.liveness.beat()
                if self.restoration.restoring:
                    self.restoration.step()
                before = time.monotonic()
                records = session.poll(self.restoration.poll_wait_ms(session.all_paused()), max_records)
                if records and len(records) < max_records:
                    records = session.top_up(records, max_records)
                polled = time.monotonic()
                self.stats.poll_s += polled - before
                if records:
                    self.process(records)
                    self.processor.pending.offsets.update(session.next_offsets(records))
                    self.liveness.last_progress = now
                    self.stats.process_s += time.monotonic() - polled
                self.stats.polls += 1
                self._after_poll(session, now, timers, bool(records))
            self.commit(wait=True)
        finally:
            self._set_ready(False)
            self.commits.close()  # a failed session: join the commit in flight, then close
            self.restoration.close()
            session.close()

    def _after_poll(self, session: Session, now: float, timers: dict[str, float], got_records: bool) -> None:
        """What the loop does after each poll besides processing: commit on the interval, account for a finished
        commit, collect garbage, evict idle streams, check silence, export gauges, look for a new checkpoint."""
        e, m = self.settings.engine, self.settings.model
        if self.processor.pending and now - timers["commit"] >= self.settings.kafka.commit_interval_ms / 1000:
            self.commit()
            timers["commit"] = now
        else:
            self.commits.settle_if_done()  # account for a finished commit without waiting for the next one
        if self.collector is not None:
            if self.stats.commits:
                self.collector.settle()
            self.collector.after_poll(got_records)
        if e.idle_ttl_s is not None:
            self.engine.store.evict_idle(time.time())
        if self.detectors.silence is not None and now - timers["silence"] >= 1.0:
            self.processor.check_silence(int(time.time() * 1000))
            timers["silence"] = now
        if self._lag_due or now - timers["lag"] >= LAG_EVERY_S:
            self._update_gauges(session)
            timers["lag"], self._lag_due = now, False
        if m.reload_interval_s and now - timers["reload"] >= m.reload_interval_s:
            self.maybe_reload()
            timers["reload"] = now

    def _rewind(self) -> None:
        """Forget everything since the last commit; the next session restores from the changelog."""
        self.liveness.reason = "reconnecting after a Kafka failure"
        self.processor.reset()
        self.commits.abandon()
        self.engine.store.clear()
        self.cold.clear()

    def stop(self) -> None:
        """Ask the loop to finish its current poll, commit and return."""
        self.stop_event.set()

    def _set_ready(self, ready: bool) -> None:
        (self.ready.set if ready else self.ready.clear)()
        self.metrics.ready.set(1 if ready else 0)

    def _update_gauges(self, session: Session) -> None:
        """Resident streams, and the lag of every assigned partition (restoring or not); a loop with no lag and
        no restore has nothing to do, which counts as progress for /healthz."""
        self.metrics.active_streams.set(len(self.engine.store))
        lags = session.lags()
        self.metrics.set_lags(lags)
        if sum(lags.values()) == 0 and not self.restoration.restoring:
            self.liveness.progressed()

    # -- rebalancing --------------------------------------------------------------------------------
    def on_revoked(self, revoked) -> None:
        """Commit the work so far (it belongs to these partitions' current owner), then drop their streams."""
        self.metrics.rebalances.labels("revoked").inc()
        self._set_ready(False)
        self.restoration.revoked(revoked)
        self.liveness.reason = "partitions revoked, waiting for the next assignment"
        self.commit(wait=True)  # a failure is raised by the poll this rebalance runs in
        self.forget_partitions({tp.partition for tp in revoked})
        for tp in revoked:
            self.metrics.forget_partition(tp.topic, tp.partition)

    def on_assigned(self, assigned) -> None:
        """Pause the assigned partitions until the loop has restored their state (never here: a callback that
        runs long stalls the group's heartbeats); export their lag from now on."""
        self.metrics.rebalances.labels("assigned").inc()
        self._set_ready(False)
        self.restoration.assigned(assigned)
        self._lag_due = True

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the state of streams whose partitions were revoked (their owner restores it from the changelog)."""
        self.processor.forget_partitions(partitions)
        self.cold.drop_partitions(partitions)

    # -- processing ---------------------------------------------------------------------------------
    def process(self, records: list) -> None:
        """One poll's records through the processor: outputs and changed streams wait for the next commit."""
        self.processor.process(records)

    def pending_records(self) -> list[OutRecord]:
        """The outputs queued since the last commit (forecasts, alerts, events, dead letters), in order."""
        return list(self.processor.pending.records)

    def use_committer(self, committer: CommitSink) -> None:
        """Commit through `committer` instead of a Kafka transaction (benchmarks and tests without a broker); a
        session with the cluster replaces it with its own."""
        self.commits.sink = committer

    def commit(self, wait: bool = False) -> None:
        """Hand the pending outputs, the state of every changed stream and the offsets to the committer, to be
        committed atomically while the loop goes on; with `wait`, return only once all of it is committed."""
        p = self.processor.pending
        if p and self.commits.sink is not None:
            started = time.monotonic()
            # start() settles the unit in flight first; its failure leaves this work pending (the loop rewinds it)
            self.commits.start(p, state_records(self.settings.kafka.changelog, p.changed, self.engine.store,
                                                   self.cold))
            self.processor.take()
            self.stats.handover_s += time.monotonic() - started
        if wait:
            self.commits.settle()

    def _account(self, p: Pending, n_state: int, seconds: float) -> None:
        """A commit settled: count what it published (metrics and the loop's counters)."""
        self.accounting.committed(p, n_state, seconds, self.engine.store, len(self.processor.firing))
