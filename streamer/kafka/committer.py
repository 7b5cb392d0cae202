"""The one place where a commit is ordered: outputs, changelog records and consumer offsets, together."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streamer.kafka.fast_paths import RecordAppender, offsets_nowait_supported, send_offsets_nowait
from streamer.schema import OutRecord

if TYPE_CHECKING:
    from kafka.producer.transaction_manager import TransactionalRequestResult
    from kafka.structs import ConsumerGroupMetadata

log = logging.getLogger(__name__)


def next_offsets(records: Iterable) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets to commit after processing `records`: one past the last record of each partition."""
    last: dict[tuple[str, int], int] = {}
    get = last.get
    for r in records:  # plain tuples as keys: a TopicPartition per record cost 1 us
        key = (r.topic, r.partition)
        if r.offset > get(key, -1):
            last[key] = r.offset
    return {TopicPartition(*key): OffsetAndMetadata(off + 1, "", -1) for key, off in last.items()}


class Committer:
    """Publishes outputs and commits consumer offsets; with exactly-once both go into one transaction.

    The commit order lives here and nowhere else:
      exactly-once:  begin -> send offsets to the transaction -> send outputs -> commit
      at-least-once: send outputs -> flush -> commit offsets on the consumer

    A commit runs on a worker thread (`start`) while the loop polls and processes the next batch, so the
    broker round trips of a transaction overlap with work instead of stalling it; `wait` joins it. One
    commit is in flight at most: `start` waits for the previous one first. The consumer (not thread
    safe) is only touched by the caller's thread: its group metadata is read in `start`, at-least-once
    offsets are committed in `wait`.
    """

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer, exactly_once: bool) -> None:
        self.consumer = consumer
        self.producer = producer
        self.exactly_once = exactly_once
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        self.last_seconds = 0.0  # the last commit waited for: its transaction (or publish and offsets commit)
        self.appender = RecordAppender(producer)
        self.offsets_direct = offsets_nowait_supported(producer)
        if exactly_once:
            producer.init_transactions()

    def commit(self, records: list[OutRecord], offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Publish `records` and commit `offsets` atomically (exactly-once) or in that order (at-least-once)."""
        self.start(records, offsets)
        self.wait()

    def start(self, records: list[OutRecord], offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Begin committing in the background, once the commit in flight (if any) is done; see `wait`."""
        self.wait()
        if not records and not offsets:
            return
        metadata = self.consumer.group_metadata() if self.exactly_once and offsets else None
        self._offsets = offsets
        self._worker = threading.Thread(target=self._publish, args=(records, offsets, metadata),
                                        name="streamer-commit", daemon=True)
        self._worker.start()

    def idle(self) -> bool:
        """No commit is running (one may be finished and not yet waited for)."""
        return self._worker is None or not self._worker.is_alive()

    def wait(self) -> bool:
        """Block until the commit in flight is done and raise its failure; True when there was one."""
        if self._worker is None:
            return False
        self._worker.join()
        self._worker = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        if not self.exactly_once and self._offsets:
            started = time.perf_counter()
            self.consumer.commit(self._offsets)
            self.last_seconds += time.perf_counter() - started
        return True

    def close(self) -> None:
        """Join the commit in flight, if any, without raising: the session is ending anyway."""
        if self._worker is not None:
            self._worker.join()
            self._worker = None
            if self._error is not None:
                log.warning("commit in flight failed at close: %r", self._error)
                self._error = None

    def _publish(self, records: list[OutRecord], offsets: dict[TopicPartition, OffsetAndMetadata],
                 metadata) -> None:
        started = time.perf_counter()
        try:
            offsets_added = None
            if self.exactly_once:
                self.producer.begin_transaction()
                if offsets:
                    offsets_added = self.send_offsets(offsets, metadata)
            futures = self.appender.append(records)
            if self.exactly_once:
                if offsets_added is not None:
                    offsets_added.wait()  # raises what adding the offsets failed with
                self.producer.commit_transaction()  # fails when any record failed
            else:
                self.producer.flush()
                for future in dict.fromkeys(futures):  # flush() waits but does not raise: offsets only after all
                    if future.failed():
                        raise future.exception
                    if not future.is_done:  # a batch kafka-python split (too large) and sent again as new ones
                        raise KafkaError("a split batch was not acknowledged as a whole; publishing again")
        except BaseException as exc:  # handed to the caller's thread by wait()
            if self.exactly_once:
                self._abort_quietly()
            self._error = exc
        self.last_seconds = time.perf_counter() - started

    def fast_paths(self) -> dict[str, bool]:
        """Which of the producer's fast paths over kafka-python's internals this committer uses."""
        return {"append": bool(self.appender.direct), "offsets": self.offsets_direct}

    def send_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                     metadata: ConsumerGroupMetadata | str) -> TransactionalRequestResult | None:
        """Add `offsets` to the open transaction without waiting; the result to wait on (None: already done).

        KafkaProducer.send_offsets_to_transaction enqueues two requests (AddOffsetsToTxn, then TxnOffsetCommit)
        and blocks until both are answered; called before the records are appended, their round trips overlap
        with the appending (10-20 ms of CPU) instead of following it. Where kafka-python's producer lacks the
        parts this needs, its blocking call is used.
        """
        if not self.offsets_direct:
            self.producer.send_offsets_to_transaction(offsets, metadata)
            return None
        return send_offsets_nowait(self.producer, offsets, metadata)

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort_transaction()
        except Exception as exc:  # the producer may be fenced or closed: the abort itself is best effort
            log.warning("abort_transaction failed: %s", exc)
