"""The changelog restorer on the real broker: bounded slices, pause until restored, a revocation abandons cleanly."""

from __future__ import annotations

import os

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamer.cold_store import ColdStore
from streamer.config import KafkaSettings
from streamer.kafka.changelog import ChangelogRestorer
from streamer.kafka.fast_paths import RecordAppender
from streamer.schema import OutRecord

PER_PARTITION, KEYS = 30_000, 500


def _fill(bootstrap: str, topic: str, partitions: int) -> None:
    """PER_PARTITION snapshots per partition over KEYS streams each; a stream's last value is b'last'."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
    records = [OutRecord(topic, f"p{p}-s{i % KEYS}".encode(),
                         b"last" if i >= PER_PARTITION - KEYS else b"x" * 40, p)
               for p in range(partitions) for i in range(PER_PARTITION)]
    RecordAppender(producer).append(records)
    producer.flush()
    producer.close()


def _streams_of(cold: ColdStore, partition: int) -> dict[str, bytes]:
    found = {}
    for i in range(KEYS):
        row = cold.get(f"p{partition}-s{i}")
        if row is not None:
            found[f"p{partition}-s{i}"] = row[1]
    return found


def _restorer(bootstrap: str, changelog: str, inputs: str, tmp_path) -> tuple:
    """A restorer of `changelog` pausing the two partitions of `inputs` on a consumer assigned them."""
    group_consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(inputs, p) for p in range(2)]
    group_consumer.assign(tps)
    cold = ColdStore(str(tmp_path))
    restorer = ChangelogRestorer(KafkaSettings(bootstrap_servers=bootstrap), changelog, cold, group_consumer)
    return restorer, group_consumer, cold, tps


def test_a_revocation_mid_restore_abandons_it_and_the_rest_completes(kafka_bootstrap, new_topic, tmp_path):
    changelog = new_topic("changelog", partitions=2)
    _fill(kafka_bootstrap, changelog, 2)
    restorer, group_consumer, cold, tps = _restorer(kafka_bootstrap, changelog, new_topic("inputs", partitions=2),
                                                    tmp_path)
    try:
        restorer.assigned(tps)
        assert group_consumer.paused() == set(tps) and restorer.restoring
        read = 0
        for _ in range(200):  # a zero-length slice is one poll of at most max_records
            done, n = restorer.step(0.0, max_records=500)
            assert done == [] and n <= 500
            read += n
            if read:
                break
        assert read > 0
        left = restorer.remaining()
        assert sorted(left) == [0, 1] and 0 < sum(left.values()) < 2 * PER_PARTITION
        restorer.revoked([tps[0]])  # as the rebalance callback would
        assert restorer.remaining().keys() == {1}
        steps = 0
        while restorer.restoring:
            done, _ = restorer.step(0.2)
            steps += 1
            assert steps < 200
        assert group_consumer.paused() == {tps[0]}, "the revoked partition is never resumed"
        assert restorer.remaining() == {}
        latest = _streams_of(cold, 1)
        assert len(latest) == KEYS and set(latest.values()) == {b"last"}
        # Assigned again (its cold rows dropped by the service meanwhile): restored from the start, completely.
        cold.drop_partitions([0])
        restorer.assigned([tps[0]])
        while restorer.restoring:
            restorer.step(0.2)
        assert group_consumer.paused() == set()
        assert set(_streams_of(cold, 0).values()) == {b"last"} and len(_streams_of(cold, 0)) == KEYS
    finally:
        restorer.close()
        group_consumer.close()
        cold.close()


def test_an_empty_changelog_partition_is_restored_at_once(kafka_bootstrap, new_topic, tmp_path):
    restorer, group_consumer, cold, tps = _restorer(kafka_bootstrap, new_topic("changelog", partitions=2),
                                                    new_topic("inputs", partitions=2), tmp_path)
    try:
        restorer.assigned(tps)
        done, n = restorer.step(0.2)
        assert sorted(done) == [0, 1] and n == 0 and not restorer.restoring
        assert group_consumer.paused() == set()
    finally:
        restorer.close()
        group_consumer.close()
        cold.close()


def test_cold_store_files_left_by_a_killed_process_are_removed_by_the_next_store(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    code = ("import sys, time\nfrom streamer.cold_store import ColdStore\nc = ColdStore(sys.argv[1])\n"
            "c.put_many([('s', 0, b'x' * 1000)])\nprint(c.path, flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    left = child.stdout.readline().strip()
    live = ColdStore(str(tmp_path))  # while the child lives, its file is held: not swept
    try:
        assert os.path.exists(left)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert os.path.exists(left)  # kill -9: no close() ran
        other = ColdStore(str(tmp_path))
        assert not os.path.exists(left)  # the next store in the folder removed it
        assert os.path.exists(live.path) and os.path.exists(other.path)  # live stores stay
        other.put_many([("a", 1, b"y")])
        assert other.get("a") == (1, b"y")
        other.close()
        assert sorted(os.listdir(tmp_path)) == [os.path.basename(live.path)]
        live.put_many([("b", 0, b"z")])
        assert live.get("b") == (0, b"z")  # the sweeps never disturbed this process's own store
    finally:
        live.close()
        if child.poll() is None:
            child.kill()
