"""Start-up: wait for the cluster and prepare the topics, retrying with capped exponential backoff.

Each attempt runs on a worker thread, so stop() is obeyed at once whatever a Kafka client blocks on, and
kafka-python's own logging is quieted meanwhile: one warning per failed attempt says what failed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError

from streamer.config import KafkaSettings
from streamer.errors import ConfigError, KafkaUnavailable
from streamer.kafka.admin import admin_topics, ensure_topics, partition_count, topic_configs
from streamer.kafka.clients import reachable
from streamer.liveness import Liveness

log = logging.getLogger(__name__)
STARTUP_BACKOFF_S = (0.5, 5.0)  # first and longest wait between attempts to reach the cluster at start-up


def input_topics(k: KafkaSettings) -> list[str]:
    """The input topics: the configured list, or the existing topics matching the pattern."""
    if not k.input_pattern:
        return k.input_topics
    pattern = re.compile(k.input_pattern)
    return sorted(t for t in admin_topics(k) if pattern.fullmatch(t))


def prepare_topics(k: KafkaSettings) -> int:
    """Check the inputs are co-partitioned and create missing output, dead-letter and changelog topics: the
    outputs with STREAMER_KAFKA__OUTPUT_PARTITIONS partitions (default: the input's), the changelog with the
    input's. Returns the forecast topic's partition count."""
    topics = input_topics(k)
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
        check_changelog_configs(k)
    have = partition_count(k, k.changelog)
    if have != n:
        raise ConfigError(f"STREAMER_KAFKA__CHANGELOG_TOPIC: {k.changelog} has {have} partitions, "
                          f"the input has {n}; they must be co-partitioned")
    return partition_count(k, k.forecast_topic)


def check_changelog_configs(k: KafkaSettings) -> None:
    """Warn, naming the setting, when an existing changelog topic is not configured as the daemon would."""
    want = k.changelog_configs
    have = topic_configs(k, k.changelog, want)
    for key, value in want.items():
        if key in have and have[key] != value and not (key == "cleanup.policy" and "compact" in have[key]):
            log.warning("the changelog topic differs from the settings: it may grow and slow every restore",
                        extra={"topic": k.changelog, "config": key, "topic_value": have[key], "wanted": value,
                               "setting": k.changelog_config_settings[key]})


class Connector:
    """Reaches the cluster and runs `prepare` (the topics) before the loop starts, retrying until stopped or
    past STREAMER_KAFKA__STARTUP_TIMEOUT_S; keeps /healthz alive and /readyz's reason current meanwhile."""

    def __init__(self, k: KafkaSettings, stop_event: threading.Event, liveness: Liveness) -> None:
        self.k, self.stop_event, self.liveness = k, stop_event, liveness
        self.answered = False  # a bootstrap server accepted a connection in the last attempt

    def connect(self, prepare: Callable[[], None]) -> bool:
        """Attempt until one succeeds (True) or stop() comes (False); raises KafkaUnavailable past the deadline."""
        k = self.k
        deadline = None if k.startup_timeout_s is None else time.monotonic() + k.startup_timeout_s
        backoff, attempt = STARTUP_BACKOFF_S[0], 0
        self.liveness.reason = f"connecting to {k.bootstrap_servers}"
        kafka_log = logging.getLogger("kafka")
        level = kafka_log.level
        kafka_log.setLevel(logging.CRITICAL)
        try:
            while not self.stop_event.is_set():
                attempt += 1
                error = self._attempt(prepare, deadline)
                if error is None:
                    return not self.stop_event.is_set()
                described = str(error) if isinstance(error, KafkaError | KafkaUnavailable) else (
                    f"{type(error).__name__}: {error}")
                stage = "preparing the topics on" if self.answered else "connecting to"
                self.liveness.reason = f"{stage} {k.bootstrap_servers}: {described}"
                log.warning("kafka not ready at %s (%s); retrying in %gs", k.bootstrap_servers, described,
                            backoff, extra={"bootstrap_servers": k.bootstrap_servers, "error": described,
                                            "attempt": attempt, "retry_in_s": backoff})
                self._wait(time.monotonic() + backoff, deadline)
                backoff = min(backoff * 2, STARTUP_BACKOFF_S[1])
            return False
        finally:
            kafka_log.setLevel(level)

    def _attempt(self, prepare: Callable[[], None], deadline: float | None) -> BaseException | None:
        """One attempt on a worker thread: None when it succeeded (or stop() came first), else its (retryable)
        failure; other failures are raised."""
        outcome: list[BaseException | None] = []

        def attempt() -> None:
            try:
                self.answered = False
                reachable(self.k)
                self.answered = True
                prepare()
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
        """Wait until `until` (or `worker` ends), stop() or the deadline (raising KafkaUnavailable), keeping
        /healthz alive meanwhile."""
        while not self.stop_event.is_set():
            now = self.liveness.beat(progress=True)  # waiting for the cluster is no stall
            if deadline is not None and now >= deadline:
                k = self.k
                what = "the cluster at {} was not ready" if self.answered else "no broker of {} answered"
                raise KafkaUnavailable(
                    f"STREAMER_KAFKA__BOOTSTRAP_SERVERS: {what.format(k.bootstrap_servers)} within "
                    f"STREAMER_KAFKA__STARTUP_TIMEOUT_S={k.startup_timeout_s:g}s ({self.liveness.reason})")
            if worker is not None and not worker.is_alive():
                return
            if until is not None and now >= until:
                return
            ends = [t for t in (until, deadline) if t is not None]
            self.stop_event.wait(min([now + 0.05 if worker is not None else now + 1.0, *ends]) - now)
