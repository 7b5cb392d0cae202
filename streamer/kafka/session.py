"""The run loop's transport on Kafka: a session is a group consumer, a (transactional) producer, their committer and
the changelog restorer, opened and closed together."""

from __future__ import annotations

import threading

from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError

from streamer.cold_store import ColdStore
from streamer.config import KafkaSettings
from streamer.kafka import fast_paths
from streamer.kafka.changelog import ChangelogRestorer
from streamer.kafka.clients import check_client_options, make_consumer, make_producer, partition_for, transactional_id
from streamer.kafka.committer import Committer, next_offsets
from streamer.kafka.connecting import Connector, prepare_topics
from streamer.kafka.polling import Poller, partition_lags
from streamer.liveness import Liveness
from streamer.transport import Partitions

PRODUCER_CLOSE_S = 10  # longest wait for the producer's buffered records when a session ends (a failed one may hang)


class _Listener(ConsumerRebalanceListener):
    """Counts revocations for the poller and hands a callback's failure to it (kafka-python swallows them)."""

    def __init__(self, poller: Poller, on_revoked: Partitions, on_assigned: Partitions) -> None:
        self.poller, self.revoked, self.assigned = poller, on_revoked, on_assigned

    def on_partitions_revoked(self, revoked) -> None:
        self.poller.revoked()
        self._call(self.revoked, list(revoked))

    def on_partitions_assigned(self, assigned) -> None:
        self._call(self.assigned, list(assigned))

    def _call(self, callback: Partitions, tps: list) -> None:
        try:
            callback(tps)
        except Exception as exc:  # raised by the poll this rebalance runs in
            self.poller.failure = exc


class KafkaSession:
    """One session with the cluster (see streamer.transport.Session)."""

    def __init__(self, k: KafkaSettings, cold: ColdStore, stop_event: threading.Event) -> None:
        self.k = k
        self.consumer = make_consumer(k)
        self.producer = make_producer(k, transactional_id(k) if k.exactly_once else None)
        self.restorer = ChangelogRestorer(k, k.changelog, cold, self.consumer)
        self.poller = Poller(stop_event)
        try:
            self.committer = Committer(self.consumer, self.producer, k.exactly_once)
        except BaseException:
            self.close()
            raise

    def subscribe(self, on_revoked: Partitions, on_assigned: Partitions) -> None:
        """Join the group on the input topics (or pattern); the first join waits for the topics' metadata."""
        listener = _Listener(self.poller, on_revoked, on_assigned)
        if self.k.input_pattern:
            self.consumer.subscribe(pattern=self.k.input_pattern, listener=listener)
        else:
            self.consumer.subscribe(self.k.input_topics, listener=listener)
            self.poller.await_metadata(self.consumer, self.k.input_topics, self.k.session_timeout_ms / 1000)

    def poll(self, timeout_ms: int, max_records: int) -> list:
        """The records of one poll, in order."""
        return self.poller.poll(self.consumer, timeout_ms, max_records)

    def top_up(self, records: list, max_records: int) -> list:
        """`records` and what reached the broker since their fetch (Poller.top_up)."""
        return self.poller.top_up(self.consumer, records, max_records)

    def next_offsets(self, records: list) -> dict:
        """TopicPartition -> OffsetAndMetadata one past the last record of each partition."""
        return next_offsets(records)

    def all_paused(self) -> bool:
        """Every assigned partition is paused for its restore."""
        return self.consumer.assignment() <= self.consumer.paused()

    def lags(self) -> dict:
        """Records left in each assigned partition (broker round trips bounded by short timeouts)."""
        return partition_lags(self.consumer)

    def fast_paths(self) -> dict[str, bool]:
        """Which of the fast paths over kafka-python's internals this session's clients use."""
        return {"decode": fast_paths.installed(self.consumer), **self.committer.fast_paths()}

    def close(self) -> None:
        """Close the restorer's reader, leave the group without committing, and close the producer."""
        self.restorer.close()  # gives up a restore in progress
        self.consumer.close(autocommit=False)
        self.producer.close(timeout=PRODUCER_CLOSE_S)


class KafkaTransport:
    """The daemon's transport: the cluster of STREAMER_KAFKA__* (see streamer.transport.Transport)."""

    failures = (KafkaError,)
    backoff_s = (1.0, 30.0)  # quick for a blip, gentle on a broker down

    def __init__(self, k: KafkaSettings) -> None:
        check_client_options(k)  # an unknown client option fails here, before any broker round trip
        self.k = k

    def connect(self, stop_event: threading.Event, liveness: Liveness) -> int | None:
        """Reach the cluster and prepare the topics, retrying with backoff (Connector)."""
        counts: list[int] = []
        if Connector(self.k, stop_event, liveness).connect(lambda: counts.append(prepare_topics(self.k))):
            return counts[-1]
        return None

    def open_session(self, cold: ColdStore, stop_event: threading.Event) -> KafkaSession:
        """New clients for a new session."""
        return KafkaSession(self.k, cold, stop_event)

    def partition_for(self, key: bytes, partitions: int) -> int:
        """Kafka's default partitioner (murmur2)."""
        return partition_for(key, partitions)
