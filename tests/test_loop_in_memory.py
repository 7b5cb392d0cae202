"""The run loop through the in-memory transport: commit order, rewind after a failed commit, and a revocation while
a commit is in flight, each in well under a second and without a broker (the same behaviours keep their broker
tests in test_reliability.py, test_commit_order.py and test_transport_committer.py)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from streamer.config import load_settings
from streamer.errors import TransportFailure
from streamer.memory_transport import InMemoryBroker, InMemoryTransport, Partition
from streamer.models import ModelConfig, build_model
from streamer.schema import forecasts_of
from streamer.service import Service

T0 = 1_700_000_000_000
STREAMS = ("a", "b", "c", "d")
OUTPUTS = ["fc", "al", "ev", "dl"]


def make_service(broker: InMemoryBroker, partitions: int = 2) -> tuple[Service, InMemoryTransport]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=1, hidden=8, heads=("forecast",), horizon=1)).eval()
    settings = load_settings(
        kafka={"input_topics": ["in"], "forecast_topic": "fc", "alert_topic": "al", "event_topic": "ev",
               "dead_letter_topic": "dl", "changelog_topic": "cl", "commit_interval_ms": 0},
        engine={"max_wait_ms": 5}, output={"anomalies": False}, metrics={"enabled": False})
    transport = InMemoryTransport(broker, ["in"], OUTPUTS, "cl", partitions=partitions)
    return Service(settings, model=model, transport=transport), transport


def produce(broker: InMemoryBroker, steps: range, partitions: int = 2) -> None:
    broker.create("in", partitions)
    for t in steps:
        for i, s in enumerate(STREAMS):
            body = {"stream": s, "ts": T0 + 60_000 * t, "values": [((t * 7 + i * 3) % 11) / 10]}
            broker.produce("in", s.encode(), json.dumps(body).encode(), partition=i % partitions, timestamp=T0)


def forecasts(broker: InMemoryBroker) -> list[tuple[str, int, float]]:
    """(stream, ts, forecast) of every published forecast, in publishing order per partition."""
    out = []
    for r in broker.records("fc"):
        for one in forecasts_of(json.loads(r.value)):
            out.append((one["stream"], one["ts"], one["forecast"][0][0]))
    return out


def until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


class Running:
    """A service's loop on a thread of its own."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.thread = threading.Thread(target=service.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.service.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def all_committed(broker: InMemoryBroker, n: int, partitions: int = 2) -> bool:
    ends = {Partition("in", p): len(broker.logs["in"][p]) for p in range(partitions)}
    return len(forecasts(broker)) >= n and all(broker.committed.get(tp) == end for tp, end in ends.items())


@pytest.fixture(scope="module")
def reference() -> list[tuple[str, int, float]]:
    """The forecasts of one uninterrupted pass over 40 steps of the four streams."""
    broker = InMemoryBroker()
    service, _ = make_service(broker)
    produce(broker, range(40))
    with Running(service):
        until(lambda: all_committed(broker, 160))
    return sorted(forecasts(broker))


def in_two_halves(between=lambda broker: None) -> tuple[InMemoryBroker, Service, InMemoryTransport]:
    """Serve 20 steps of the four streams until committed, call `between(broker)`, serve 20 more."""
    broker = InMemoryBroker()
    service, transport = make_service(broker)
    produce(broker, range(20))
    with Running(service):
        until(lambda: all_committed(broker, 80))
        between(broker)
        produce(broker, range(20, 40))
        until(lambda: all_committed(broker, 160))
    return broker, service, transport


def test_the_loop_commits_outputs_states_and_offsets_together_once(reference) -> None:
    started = time.monotonic()
    broker, service, transport = in_two_halves()
    assert sorted(forecasts(broker)) == reference  # every reading forecast once
    changelog = {r.key.decode(): r.partition for r in broker.records("cl")}
    assert changelog == {s: i % 2 for i, s in enumerate(STREAMS)}  # co-partitioned with the input
    assert transport.sessions == 1 and service.stats.rewinds == 0 and service.stats.commits == broker.commits
    assert time.monotonic() - started < 1.0


def test_a_failed_commit_rewinds_to_the_last_commit_and_the_state_comes_back_from_the_changelog(reference) -> None:
    started = time.monotonic()
    broker, service, transport = in_two_halves(lambda b: b.commit_failures.append(TransportFailure("broker gone")))
    assert service.stats.rewinds == 1 and transport.sessions == 2
    assert service.stats.restored_records > 0  # the streams' state was read back, not started afresh
    assert sorted(forecasts(broker)) == reference  # nothing lost, nothing twice, the same numbers
    assert not broker.commit_failures
    assert time.monotonic() - started < 1.0


def test_a_revocation_with_a_commit_in_flight_settles_it_then_restores_the_reassigned_partitions(reference) -> None:
    started = time.monotonic()
    broker = InMemoryBroker()
    service, transport = make_service(broker)
    in_flight_at_revocation = []
    on_revoked = service.on_revoked

    def revoked(tps: list) -> None:
        in_flight_at_revocation.append(service.commits.in_flight)
        on_revoked(tps)

    service.on_revoked = revoked
    broker.rebalance_at_commit = 1  # the poll after the first commit starts runs a rebalance
    produce(broker, range(20))
    with Running(service):
        until(lambda: all_committed(broker, 80) and not service.restoration.restoring)
        produce(broker, range(20, 40))
        until(lambda: all_committed(broker, 160))
    assert in_flight_at_revocation == [True]  # the unit was started, not yet settled, when the partitions went
    assert sorted(forecasts(broker)) == reference  # settled by the revocation, the state read back after it
    assert service.stats.restored_records > 0 and transport.sessions == 1 and service.stats.rewinds == 0
    assert time.monotonic() - started < 1.0


def test_a_revocation_whose_commit_fails_rewinds_the_session_and_loses_nothing(reference) -> None:
    started = time.monotonic()
    broker = InMemoryBroker()
    service, transport = make_service(broker)
    service.settings.kafka.commit_interval_ms = 10**6  # commits only on revocation and at stop
    produce(broker, range(20))
    with Running(service):
        until(lambda: service.processor.pending.readings == 80)  # processed, not committed
        broker.commit_failures.append(TransportFailure("fenced"))
        broker.rebalance()  # the revocation's commit fails inside the poll: the loop rewinds
        until(lambda: transport.sessions == 2)
        until(lambda: service.processor.pending.readings == 80)  # replayed from the last commit (none)
        produce(broker, range(20, 40))
        until(lambda: service.processor.pending.readings == 160)
    assert all_committed(broker, 160)  # committed at stop
    assert service.stats.rewinds == 1 and broker.commits == 1
    assert sorted(forecasts(broker)) == reference
    assert time.monotonic() - started < 1.0


def test_the_loop_reports_its_time_line() -> None:
    """Where the loop's time went: waiting in polls, processing, handing commits over, the commits themselves;
    per poll and per commit in the stop log's figures."""
    _, service, _ = in_two_halves()
    stats = service.stats
    assert stats.poll_s > 0 and stats.process_s > 0 and stats.handover_s > 0 and stats.transaction_s > 0
    line = stats.timeline()
    assert line["process_ms_per_poll"] == round(1000 * stats.process_s / stats.polls, 3)
    assert line["transaction_ms_per_commit"] == round(1000 * stats.transaction_s / stats.commits, 3)
    assert set(line) == {"poll_wait_ms_per_poll", "process_ms_per_poll", "handover_ms_per_commit",
                         "transaction_ms_per_commit"}


def test_a_commit_is_timed_by_its_sink_not_by_when_the_loop_notices_it() -> None:
    """The duration the metrics and the time line get is the sink's measure of its commit: a unit that finished
    while the loop was busy still reports the commit's own time."""
    from streamer.committing import Commits, InMemorySink
    from streamer.processor import Pending

    seen: list[float] = []
    commits = Commits(lambda work, n_state, seconds: seen.append(seconds), lambda exc: None)
    commits.sink = sink = InMemorySink()
    sink.last_seconds = 0.25
    commits.start(Pending(), [])
    time.sleep(0.3)
    commits.settle()
    assert seen == [0.25]
