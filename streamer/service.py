"""The run loop of `streamer serve`: consume readings, step the engine, publish forecasts and state, commit.

Work is committed every commit interval: the outputs of the polls since the last commit, the state of
every stream they changed (to the changelog) and the consumer offsets go together (in one
transaction when exactly-once is on). A crash replays the uncommitted work from the state that was
committed with its offsets; a Kafka failure (broker outage, fencing) does the same in process: the
loop rewinds to the last commit, backs off, reconnects and restores.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from dataclasses import dataclass

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

from streamer import record_reader
from streamer.changelog import ChangelogRestorer, ColdStore
from streamer.committing import Commits, CommitSink
from streamer.config import Settings, resolve_device, resolve_threads
from streamer.detection import StreamDetectors, pipeline_config
from streamer.engine import Engine, initial_state_of
from streamer.errors import CheckpointError, ConfigError, KafkaUnavailable
from streamer.heap import BatchCollector
from streamer.metrics import HealthServer, Metrics
from streamer.model_source import (
    ServedModel,
    check_servable,
    checkpoint_path,
    checkpoint_signature,
    event_hysteresis,
    load_checkpoint,
    served_model,
    wrap_model,
)
from streamer.models import RecurrentModel
from streamer.processor import Pending, Processor
from streamer.transport import (
    Committer,
    OutRecord,
    admin_topics,
    check_client_options,
    ensure_topics,
    make_consumer,
    make_producer,
    next_offsets,
    partition_count,
    partition_for,
    reachable,
    topic_configs,
)
from streamer.tuning import serving_process

log = logging.getLogger(__name__)
LAG_EVERY_S = 2.0  # consumer lag is asked of the broker this often: a metadata round trip, not worth every batch
TOP_UP_MS = 20  # longest wait for the fetch that follows a poll (the broker answers it at once when data waits)
STARTUP_BACKOFF_S = (0.5, 5.0)  # first and longest wait between attempts to reach the cluster at start-up
# first and longest wait before a new session after a Kafka failure: quick for a blip, gentle on a broker down
SESSION_BACKOFF_S = (1.0, 30.0)


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
    rewinds: int = 0
    reloads: int = 0


class _Rebalance(ConsumerRebalanceListener):
    """State follows partitions: commit, then drop revoked partitions' streams; restore assigned ones."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked) -> None:
        self.service.on_revoked(revoked)

    def on_partitions_assigned(self, assigned) -> None:
        self.service.on_assigned(assigned)


class Service:
    """Consumes readings, keeps each stream's state across polls, publishes forecasts; exactly once."""

    def __init__(self, settings: Settings, model: RecurrentModel | None = None,
                 metrics: Metrics | None = None, collector: BatchCollector | None = None,
                 http: HealthServer | None = None) -> None:
        self.settings = settings
        check_client_options(settings.kafka)  # an unknown client option fails here, before any broker round trip
        self.collector = collector  # runs the cyclic garbage collector between batches (the daemon's process)
        self.device = resolve_device(settings.engine.device)
        self.threads = resolve_threads(settings.engine.threads)
        self.metrics = metrics or Metrics()
        self.served = (wrap_model(model, f"{model.config.family}-h{model.config.hidden}", "code")
                       if model is not None else served_model(settings, self.device))
        self.cold = ColdStore(settings.engine.state_dir)
        self.engine = self._make_engine(self.served)
        self.detectors = self._make_detectors(self.served)
        self.processor = Processor(settings, self.served, self.engine, self.detectors, hooks=self.metrics,
                                   partition_for=partition_for)
        self.stats = LoopStats()
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.heartbeat = time.monotonic()
        self.failed_commits_in_row = 0
        self.last_progress = time.monotonic()  # a restore slice or a batch did work, or there was none to do
        self._restorer: ChangelogRestorer | None = None
        self._restore_began = 0.0
        self._restore_records = 0
        self._restore_partitions: list[int] = []
        self._lag_due = False
        self.http = http  # the endpoints, when opened before the service (else run() opens them)
        self._reason = "starting"  # why /readyz says not ready
        self._answered = False  # a bootstrap server accepted a connection in the last start-up attempt
        self.commits = Commits(self._account, self._commit_failed)
        self._failure: BaseException | None = None
        self._rebalances = 0  # partitions revoked so far (a batch polled across a revocation is void)
        self._evictions_seen = 0
        self.metrics.set_model(self.served.name, self.served.version, self.served.family)
        if http is not None:
            http.bind(self.alive, self.ready.is_set, self.not_ready_reason)

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
                                 on_evict=self._on_evict, on_miss=self._on_miss)

    def _make_detectors(self, served: ServedModel) -> StreamDetectors:
        o = self.settings.output
        on, off, run = event_hysteresis(self.settings, served)
        if o.anomalies and served.head is None:
            log.info("anomaly scoring off: the model has no forecast or reconstruction head", extra={
                "model": served.name, "heads": list(served.model.config.heads)})
        return StreamDetectors(
            served.model.config.n_features, served.model.config.heads, served.name, served.version,
            anomalies=o.anomalies, event_on=on, event_off=off, event_min_run=run,
            silent_after_ms=int(o.silent_after_s * 1000) if o.silent_after_s else None,
            channel_names=list(served.channels) if served.channels else None,
            pipeline=pipeline_config(self.settings.detectors, served.detectors))

    def maybe_reload(self) -> None:
        """Serve a new checkpoint written at the configured path; keep states when the architecture matches."""
        path = checkpoint_path(self.settings)
        if path is None or checkpoint_signature(path) in (None, self.served.signature):
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
            self._evictions_seen = 0
        self.served = new
        self.detectors = self._make_detectors(new)
        self.processor.use(new, self.engine, self.detectors)
        self.stats.reloads += 1
        self.metrics.set_model(new.name, new.version, new.family)
        log.info("model reloaded", extra={"model": new.name, "version": new.version, "states_kept": keep})

    # -- topics and the loop ------------------------------------------------------------------------
    def transactional_id(self) -> str:
        """Stable per instance, so a restarted instance fences and aborts its predecessor's open transaction."""
        k = self.settings.kafka
        return k.transactional_id or f"{k.group_id}-{k.instance_id or socket.gethostname()}"

    def input_topics(self) -> list[str]:
        """The input topics: the configured list, or the existing topics matching the pattern."""
        k = self.settings.kafka
        if not k.input_pattern:
            return k.input_topics
        pattern = re.compile(k.input_pattern)
        return sorted(t for t in admin_topics(k) if pattern.fullmatch(t))

    def _prepare_topics(self) -> None:
        """Check the inputs are co-partitioned and create missing output, dead-letter and changelog topics: the
        outputs with STREAMER_KAFKA__OUTPUT_PARTITIONS partitions (default: the input's), the changelog with the
        input's."""
        k = self.settings.kafka
        topics = self.input_topics()
        if not topics:  # retried at start-up (as a missing input topic is): the topics may come after the daemon
            raise KafkaUnavailable(f"STREAMER_KAFKA__INPUT_PATTERN: no topic matches {k.input_pattern!r} (yet)")
        counts = {t: partition_count(k, t) for t in topics}
        missing = sorted(t for t, n in counts.items() if n == 0)
        if missing:
            raise KafkaUnavailable(f"STREAMER_KAFKA__INPUT_TOPICS: {', '.join(missing)} do not exist (yet)")
        if len(set(counts.values())) != 1:
            raise ConfigError(f"STREAMER_KAFKA__INPUT_TOPICS: topics must have equal partition counts, got {counts}")
        n = next(iter(counts.values()))
        outputs = {"num_partitions": k.output_partitions or n}
        created = ensure_topics(k, {
            k.forecast_topic: outputs, k.alert_topic: outputs, k.event_topic: outputs, k.dead_letter_topic: outputs,
            k.changelog: {"num_partitions": n, "configs": k.changelog_configs},
        })
        if k.changelog not in created:  # one the daemon just created has its configs
            self._check_changelog_configs()
        self.processor.set_forecast_partitions(partition_count(k, k.forecast_topic))
        have = partition_count(k, k.changelog)
        if have != n:
            raise ConfigError(f"STREAMER_KAFKA__CHANGELOG_TOPIC: {k.changelog} has {have} partitions, "
                              f"the input has {n}; they must be co-partitioned")

    def _check_changelog_configs(self) -> None:
        """Warn, naming the setting, when an existing changelog topic is not configured as the daemon would."""
        k = self.settings.kafka
        want = k.changelog_configs
        have = topic_configs(k, k.changelog, want)
        for key, value in want.items():
            if key in have and have[key] != value and not (key == "cleanup.policy" and "compact" in have[key]):
                log.warning("the changelog topic differs from the settings: it may grow and slow every restore",
                            extra={"topic": k.changelog, "config": key, "topic_value": have[key], "wanted": value,
                                   "setting": k.changelog_config_settings[key]})

    def alive(self) -> bool:
        """/healthz: the loop (or, at start-up, the wait for the cluster) turned recently, made progress when there
        was work (a restore, or input lag), and its commits are not failing over and over."""
        m, now = self.settings.metrics, time.monotonic()
        return (now - self.heartbeat < m.liveness_timeout_s and now - self.last_progress < m.stall_timeout_s
                and self.failed_commits_in_row < m.unhealthy_after_failed_commits)

    def not_ready_reason(self) -> str:
        """Why /readyz answers 503: connecting (and the last error), waiting for partitions, restoring their state
        (and the records left), a Kafka failure."""
        return self._reason

    def run(self) -> LoopStats:
        """Open the HTTP endpoints, wait for the cluster, then process until stop() is called, surviving Kafka
        failures; returns what was done. Raises KafkaUnavailable past STREAMER_KAFKA__STARTUP_TIMEOUT_S."""
        m = self.settings.metrics
        if m.enabled and self.http is None:
            self.http = HealthServer(self.metrics, m.host, m.port, self.alive, self.ready.is_set,
                                     self.not_ready_reason).start()
            log.info("http endpoints", extra={"host": m.host, "port": self.http.port})
        try:
            if self._connect():
                with serving_process(self.threads, self.settings.engine.switch_interval_ms):
                    self._sessions()
        finally:
            self._reason = "stopped"
            self._set_ready(False)
            if self.http is not None:
                self.http.stop()
            self.cold.close()
        log.info("stopped", extra=vars(self.stats))
        return self.stats

    def _connect(self) -> bool:
        """Wait for the cluster and prepare the topics, retrying with capped exponential backoff; False if stopped.

        Each attempt runs on a worker thread, so stop() is obeyed at once whatever a Kafka client blocks on, and
        kafka-python's own logging is quieted meanwhile: one warning per failed attempt says what failed.
        """
        k = self.settings.kafka
        deadline = None if k.startup_timeout_s is None else time.monotonic() + k.startup_timeout_s
        backoff, attempt = STARTUP_BACKOFF_S[0], 0
        self._reason = f"connecting to {k.bootstrap_servers}"
        kafka_log = logging.getLogger("kafka")
        level = kafka_log.level
        kafka_log.setLevel(logging.CRITICAL)
        try:
            while not self.stop_event.is_set():
                attempt += 1
                error = self._attempt(deadline)
                if error is None:
                    return not self.stop_event.is_set()
                described = str(error) if isinstance(error, KafkaError | KafkaUnavailable) else (
                    f"{type(error).__name__}: {error}")
                stage = "preparing the topics on" if self._answered else "connecting to"
                self._reason = f"{stage} {k.bootstrap_servers}: {described}"
                log.warning("kafka not ready at %s (%s); retrying in %gs", k.bootstrap_servers, described,
                            backoff, extra={"bootstrap_servers": k.bootstrap_servers, "error": described,
                                            "attempt": attempt, "retry_in_s": backoff})
                self._wait(time.monotonic() + backoff, deadline)
                backoff = min(backoff * 2, STARTUP_BACKOFF_S[1])
            return False
        finally:
            kafka_log.setLevel(level)

    def _attempt(self, deadline: float | None) -> BaseException | None:
        """One attempt to reach the cluster and prepare the topics, on a worker thread: None when it succeeded
        (or stop() came first), else its (retryable) failure; other failures are raised."""
        outcome: list[BaseException | None] = []

        def attempt() -> None:
            try:
                self._answered = False
                reachable(self.settings.kafka)
                self._answered = True
                self._prepare_topics()
                outcome.append(None)
            except BaseException as exc:  # handed to the waiting thread
                outcome.append(exc)

        worker = threading.Thread(target=attempt, name="streamer-connect", daemon=True)
        worker.start()
        self._wait(None, deadline, worker)
        if not outcome:  # stopped while the attempt runs: it is left to finish (or not) on its own
            return None
        error = outcome[0]
        if error is not None and not isinstance(error, KafkaError | KafkaUnavailable | OSError):
            raise error
        return error

    def _wait(self, until: float | None, deadline: float | None, worker: threading.Thread | None = None) -> None:
        """Wait until `until` (or `worker` ends), stop() or the start-up deadline (raising KafkaUnavailable),
        keeping /healthz alive meanwhile."""
        while not self.stop_event.is_set():
            self.heartbeat = self.last_progress = now = time.monotonic()  # waiting for the cluster is no stall
            if deadline is not None and now >= deadline:
                k = self.settings.kafka
                what = "the cluster at {} was not ready" if self._answered else "no broker of {} answered"
                raise KafkaUnavailable(
                    f"STREAMER_KAFKA__BOOTSTRAP_SERVERS: {what.format(k.bootstrap_servers)} within "
                    f"STREAMER_KAFKA__STARTUP_TIMEOUT_S={k.startup_timeout_s:g}s ({self._reason})")
            if worker is not None and not worker.is_alive():
                return
            if until is not None and now >= until:
                return
            ends = [t for t in (until, deadline) if t is not None]
            self.stop_event.wait(min([now + 0.05 if worker is not None else now + 1.0, *ends]) - now)

    def _sessions(self) -> None:
        """Sessions with the cluster until stopped: a Kafka failure rewinds to the last commit, backs off, retries."""
        backoff = SESSION_BACKOFF_S[0]
        while not self.stop_event.is_set():
            try:
                self._serve()
                return
            except KafkaError as exc:
                self.stats.rewinds += 1
                self._reason = f"kafka failure, retrying in {backoff:g}s: {exc!r}"
                log.warning("kafka failure, rewinding to the last commit", extra={
                    "error": repr(exc), "retry_in_s": backoff})
                self._rewind()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, SESSION_BACKOFF_S[1])

    def _serve(self) -> None:
        """One session with the cluster: clients, subscription, the poll-process-commit loop."""
        k, e = self.settings.kafka, self.settings.engine
        self._reason = f"joining group {k.group_id}: waiting for partitions and their state"
        self.last_progress = time.monotonic()
        consumer = make_consumer(k)
        producer = make_producer(k, self.transactional_id() if k.exactly_once else None)
        self._restorer = ChangelogRestorer(k, k.changelog, self.cold, consumer)
        try:
            committer = self.commits.sink = Committer(consumer, producer, k.exactly_once)
            self._report_fast_paths({"decode": record_reader.installed(consumer), **committer.fast_paths()})
            if k.input_pattern:
                consumer.subscribe(pattern=k.input_pattern, listener=_Rebalance(self))
            else:
                consumer.subscribe(k.input_topics, listener=_Rebalance(self))
                self.await_metadata(consumer, k.input_topics)
            log.info("serving", extra={"topics": k.input_pattern or k.input_topics, "group": k.group_id,
                                       "device": self.device, "threads": self.threads, "model": self.served.name,
                                       "version": self.served.version, "exactly_once": k.exactly_once})
            timers = dict.fromkeys(("commit", "lag", "reload", "silence"), time.monotonic())
            max_records = min(e.max_batch_readings, e.capacity)
            while not self.stop_event.is_set():
                self.heartbeat = now = time.monotonic()
                if self._restorer.restoring:
                    self._restore_slice()
                records = self._poll(consumer, self._poll_wait_ms(consumer), max_records)
                if records and len(records) < max_records:
                    records = self.top_up(consumer, records, max_records)
                if records:
                    self.process(records)
                    self.processor.pending.offsets.update(next_offsets(records))
                    self.last_progress = now
                self.stats.polls += 1
                self._after_poll(consumer, now, timers, bool(records))
            self.commit(wait=True)
        finally:
            self._set_ready(False)
            self.commits.close()  # a failed session: join the commit in flight, then close
            self._restorer.close()
            consumer.close(autocommit=False)
            producer.close(timeout=10)

    def _after_poll(self, consumer, now: float, timers: dict[str, float], got_records: bool) -> None:
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
            self._update_gauges(consumer)
            timers["lag"], self._lag_due = now, False
        if m.reload_interval_s and now - timers["reload"] >= m.reload_interval_s:
            self.maybe_reload()
            timers["reload"] = now

    def _poll_wait_ms(self, consumer) -> int:
        """The poll's longest wait: none while every assigned partition waits for its restore (which is the
        work to do), else the configured one."""
        if self._restorer.restoring and consumer.assignment() <= consumer.paused():
            return 0
        return self.settings.engine.max_wait_ms

    def _restore_slice(self) -> None:
        """Restore state for one slice of time; resume the partitions it completed; ready once all are."""
        done, n = self._restorer.step(self.settings.engine.restore_slice_ms / 1000)
        if n:
            self.stats.restored_records += n
            self.metrics.restored.inc(n)
            self._restore_records += n
            self.last_progress = time.monotonic()
        left = self._restorer.remaining()
        for p, records in left.items():
            self.metrics.restore_remaining.labels(str(p)).set(records)
        for p in done:
            self.metrics.restore_remaining.labels(str(p)).set(0)
        if left:
            self._reason = (f"restoring the state of partitions {sorted(left)}: {sum(left.values())} "
                                   f"changelog records left, {self._restore_records} read")
            return
        log.info("restored state", extra={"partitions": self._restore_partitions, "records": self._restore_records,
                                          "seconds": round(time.monotonic() - self._restore_began, 3)})
        self._reason = "all partitions restored"
        self._set_ready(True)

    def await_metadata(self, consumer, topics: list[str]) -> None:
        """Hold the first join of the group until the consumer's metadata has every input topic.

        The group leader assigns partitions from its own metadata. When its first join comes before the first
        metadata response of the subscription, it finds none ("No partition metadata for topic"), assigns
        nothing, and kafka-python does not rejoin when the metadata arrives (dpkp/kafka-python#2377): the
        instance idled for good (once in about 100 daemon starts of the benchmarks). The topics exist (checked
        at start), so this wait is one metadata round trip; past the session timeout it fails the session, to be
        retried.
        """
        deadline = time.monotonic() + self.settings.kafka.session_timeout_ms / 1000
        missing = [t for t in topics if not consumer.partitions_for_topic(t)]
        while missing:
            if time.monotonic() > deadline:
                raise KafkaError(f"no partition metadata for input topics {missing}")
            self.stop_event.wait(0.1)
            missing = [t for t in missing if not consumer.partitions_for_topic(t)]

    def _poll(self, consumer, timeout_ms: int, max_records: int) -> list:
        """The records of one poll, in order; raises the failure of a commit made in a rebalance callback."""
        batch = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self._failure is not None:  # kafka-python swallows listener errors: on_revoked hands them over
            failure, self._failure = self._failure, None
            raise failure
        return [r for recs in batch.values() for r in recs]

    def top_up(self, consumer, records: list, max_records: int) -> list:
        """Add what reached the broker since the fetch that `records` came from.

        kafka-python sends a fetch only from inside a poll, and a poll answered by a fetch sent earlier returns
        what had arrived when the broker answered it: what arrived while the last batch was processed would
        wait a whole extra cycle. One more short poll fetches it into this batch.

        A rebalance inside that poll committed the work before `records` and dropped the state of every
        partition (eager protocol), to be restored as of the committed offsets, which are where `records`
        start. So `records` are given up: each of their partitions that this consumer still holds is sought
        back to its first record there (kafka-python keeps a retained partition's position, which is past
        them), and the others are left to their new owner, who starts at the committed offsets.
        """
        rebalances = self._rebalances
        fresh = self._poll(consumer, TOP_UP_MS, max_records - len(records))
        if self._rebalances == rebalances:
            return records + fresh
        start: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            start[key] = min(r.offset, start.get(key, r.offset))
        held = consumer.assignment()  # mid-rebalance this is still the old assignment, which is fine to seek
        for (topic, partition), offset in start.items():
            tp = TopicPartition(topic, partition)
            if tp in held:
                consumer.seek(tp, offset)
        return [r for r in fresh if (r.topic, r.partition) not in start]  # the others come after the seek

    def _rewind(self) -> None:
        """Forget everything since the last commit; the next session restores from the changelog."""
        self._reason = "reconnecting after a Kafka failure"
        self.processor.reset()
        self.commits.abandon()
        self.engine.store.clear()
        self.cold.clear()
        self._failure = None

    def stop(self) -> None:
        """Ask the loop to finish its current poll, commit and return."""
        self.stop_event.set()

    def _set_ready(self, ready: bool) -> None:
        (self.ready.set if ready else self.ready.clear)()
        self.metrics.ready.set(1 if ready else 0)

    def _update_gauges(self, consumer) -> None:
        """Resident streams, and the lag of every assigned partition (restoring or not); a loop with no lag and
        no restore has nothing to do, which counts as progress for /healthz."""
        self.metrics.active_streams.set(len(self.engine.store))
        assigned = consumer.assignment()
        ends = {tp: consumer.highwater(tp) for tp in assigned}
        unknown = [tp for tp, end in ends.items() if end is None]  # paused, or not fetched yet
        if unknown:
            try:
                ends.update(consumer.end_offsets(unknown, timeout_ms=1000))
            except KafkaError:
                pass
        total = 0
        for tp in assigned:
            try:
                pos = consumer.position(tp, timeout_ms=200)
            except KafkaError:
                continue
            if pos is not None and ends.get(tp) is not None:
                lag = max(ends[tp] - pos, 0)
                total += lag
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
        if total == 0 and not self._restorer.restoring:
            self.last_progress = time.monotonic()

    # -- rebalancing --------------------------------------------------------------------------------
    def on_revoked(self, revoked) -> None:
        """Commit the work so far (it belongs to these partitions' current owner), then drop their streams."""
        self.metrics.rebalances.labels("revoked").inc()
        self._rebalances += 1
        self._set_ready(False)
        if self._restorer is not None:  # none outside a session with the cluster
            self._restorer.revoked(revoked)
        self._reason = "partitions revoked, waiting for the next assignment"
        try:
            self.commit(wait=True)
        except Exception as exc:  # kafka-python swallows listener errors: hand it to the loop
            self._failure = exc
            return
        self.forget_partitions({tp.partition for tp in revoked})
        for tp in revoked:
            for gauge, labels in ((self.metrics.lag, (tp.topic, str(tp.partition))),
                                  (self.metrics.restore_remaining, (str(tp.partition),))):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass

    def on_assigned(self, assigned) -> None:
        """Pause the assigned partitions until the loop has restored their state (never here: a callback that
        runs long stalls the group's heartbeats); export their lag from now on."""
        self.metrics.rebalances.labels("assigned").inc()
        self._set_ready(False)
        if self._restorer is not None:
            self._restorer.assigned(assigned)
        self._restore_began, self._restore_records = time.monotonic(), 0
        self._restore_partitions = sorted({tp.partition for tp in assigned})
        self._reason = (f"restoring the state of partitions {self._restore_partitions}"
                               if assigned else "no input partitions assigned")
        self._lag_due = True

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the state of streams whose partitions were revoked (their owner restores it from the changelog)."""
        self.processor.forget_partitions(partitions)
        self.cold.drop_partitions(partitions)

    def _on_evict(self, stream: str, blob: bytes) -> None:
        # Its committed state is in the changelog; keep the latest locally for its return (and the next commit).
        self.cold.put_many([(stream, self.partition_of.pop(stream), blob)])

    def _on_miss(self, stream: str) -> bytes | None:
        found = self.cold.get(stream)
        if found is None:
            return None
        self.stats.cold_loads += 1  # a snapshot that does not fit the model is discarded by the store
        return found[1]

    # -- processing ---------------------------------------------------------------------------------
    def process(self, records: list) -> None:
        """One poll's records through the processor: outputs and changed streams wait for the next commit."""
        self.processor.process(records)

    def pending_records(self) -> list[OutRecord]:
        """The outputs queued since the last commit (forecasts, alerts, events, dead letters), in order."""
        return list(self.processor.pending.records)

    def _report_fast_paths(self, in_use: dict[str, bool]) -> None:
        """The streamer_kafka_fast_path gauge, and a warning per fast path the installed kafka-python rules out."""
        for path, on in in_use.items():
            self.metrics.kafka_fast_path.labels(path=path).set(1 if on else 0)
            if not on:
                log.warning("kafka-python's stock path in use: its internals differ from those the fast path was "
                            "written for (slower, same results)", extra={"path": path})

    def use_committer(self, committer: CommitSink) -> None:
        """Commit through `committer` instead of a Kafka transaction (benchmarks and tests without a broker); a
        session with the cluster replaces it with its own."""
        self.commits.sink = committer

    def commit(self, wait: bool = False) -> None:
        """Hand the pending outputs, the state of every changed stream and the offsets to the committer, to be
        committed atomically while the loop goes on; with `wait`, return only once all of it is committed."""
        p = self.processor.pending
        if p and self.commits.sink is not None:
            # start() settles the unit in flight first; its failure leaves this work pending (the loop rewinds it)
            self.commits.start(p, self._state_records(p))
            self.processor.take()
        if wait:
            self.commits.settle()

    def _state_records(self, p: Pending) -> list[OutRecord]:
        """The changelog records of the streams the pending work changed: their latest snapshots."""
        k, store = self.settings.kafka, self.engine.store
        resident = [s for s in p.changed if s in store]
        state = [OutRecord(k.changelog, s.encode(), blob, p.changed[s])
                 for s, blob in zip(resident, store.snapshot_each(resident), strict=True)]
        for s in p.changed:
            if s not in store:  # evicted since it changed: its latest state went to the cold store
                found = self.cold.get(s)
                if found is not None:
                    state.append(OutRecord(k.changelog, s.encode(), found[1], p.changed[s]))
        return state

    def _commit_failed(self, exc: BaseException) -> None:
        """Count a failed commit; past the configured number in a row the instance reports itself unhealthy."""
        self.failed_commits_in_row += 1
        self.metrics.commit_failures.inc()
        self.metrics.failed_commits_in_row.set(self.failed_commits_in_row)
        limit = self.settings.metrics.unhealthy_after_failed_commits
        if self.failed_commits_in_row == limit:
            log.error("commits keep failing on the same work: /healthz reports unhealthy until one succeeds", extra={
                "failed_commits_in_row": self.failed_commits_in_row, "error": repr(exc),
                "setting": "STREAMER_METRICS__UNHEALTHY_AFTER_FAILED_COMMITS"})

    def _account(self, p: Pending, n_state: int, seconds: float) -> None:
        """A commit settled: count what it published (metrics and the loop's counters)."""
        self.failed_commits_in_row = 0
        self.metrics.failed_commits_in_row.set(0)
        done = time.time()
        m = self.metrics
        m.commit_seconds.observe(seconds)
        m.readings.inc(p.readings)
        for kind, n in p.kinds.items():
            m.outputs.labels(kind).inc(n)
        m.outputs.labels("state").inc(n_state)
        for reason, n in p.reasons.items():
            m.dead_letters.labels(reason).inc(n)
        m.outputs.labels("dead_letter").inc(sum(p.reasons.values()))
        for kind, n in p.out_of_order.items():
            m.out_of_order.labels(kind).inc(n)
        for ts in p.stamps:
            m.latency.observe(max(done - ts / 1000, 0.0))
        evictions = self.engine.store.evictions
        m.evictions.inc(evictions - self._evictions_seen)
        self._evictions_seen = evictions
        m.active_streams.set(len(self.engine.store))
        m.alerts_firing.set(len(self.processor.firing))
        self.stats.commits += 1
        self.stats.readings += p.readings
        self.stats.outputs += sum(p.kinds.values())
        self.stats.dead_letters += sum(p.reasons.values())
