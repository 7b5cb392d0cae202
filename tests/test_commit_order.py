"""The commit order without a broker: the service's commits through an in-memory sink (the same behaviours keep
their broker tests in test_reliability.py and test_transport_committer.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from kafka import TopicPartition

from streamer.committing import InMemorySink
from streamer.config import load_settings
from streamer.models import ModelConfig, build_model
from streamer.service import Service

T0 = 1_700_000_000_000


def service(**metrics) -> tuple[Service, InMemorySink]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=1, hidden=8, heads=("forecast",), horizon=1)).eval()
    settings = load_settings(kafka={"forecast_topic": "fc", "changelog_topic": "cl"},
                             output={"anomalies": False}, metrics={"enabled": False, **metrics})
    svc = Service(settings, model=model)
    sink = InMemorySink()
    svc.use_committer(sink)
    return svc, sink


def poll(t: int, streams: dict[str, int]) -> list[SimpleNamespace]:
    """One reading at time t of each stream (name -> input partition), offsets t."""
    return [SimpleNamespace(value=json.dumps({"stream": s, "ts": T0 + t, "values": [0.1 * t]}).encode(),
                            key=s.encode(), topic="in", partition=p, offset=t, timestamp=T0)
            for s, p in streams.items()]


def offsets_of(records: list[SimpleNamespace]) -> dict:
    return {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}


def topics(unit: tuple[list, dict]) -> list[str]:
    return [r.topic for r in unit[0]]


def test_each_commit_is_one_unit_of_outputs_then_states_with_its_offsets_and_one_at_a_time() -> None:
    svc, sink = service()
    streams = {"a": 0, "b": 1}
    for t in (1, 2, 3):
        recs = poll(t, streams)
        svc.process(recs)
        svc.processor.pending.offsets.update(offsets_of(recs))
        svc.commit()  # started in the background; the next one settles it first
    svc.commit(wait=True)
    assert sink.calls == ["start", "wait", "start", "wait", "start", "wait"]
    assert len(sink.committed) == 3
    for t, unit in enumerate(sink.committed, start=1):
        assert topics(unit) == ["fc", "fc", "cl", "cl"]  # the outputs, then the changed streams' states
        assert {tp.partition: o for tp, o in unit[1].items()} == {0: t + 1, 1: t + 1}
        assert {r.key: r.partition for r in unit[0] if r.topic == "cl"} == {b"a": 0, b"b": 1}
    assert svc.stats.commits == 3 and svc.stats.readings == 6


def test_a_failed_commit_is_counted_and_raised_and_the_next_success_resets_the_count() -> None:
    svc, sink = service(unhealthy_after_failed_commits=2)
    for t, fail in ((1, True), (2, True), (3, False)):
        svc.process(poll(t, {"a": 0}))
        sink.fail_next = ConnectionError("broker gone") if fail else None
        if fail:
            with pytest.raises(ConnectionError):
                svc.commit(wait=True)
        else:
            svc.commit(wait=True)
        assert svc.failed_commits_in_row == (t if fail else 0)
        assert svc.alive() is (t < 2 or not fail)  # unhealthy from the 2nd failure in a row until a success
    assert len(sink.committed) == 1 and svc.stats.commits == 1


def test_a_revocation_settles_the_commit_in_flight_commits_the_rest_then_drops_the_revoked_streams() -> None:
    svc, sink = service()
    streams = {"a": 0, "b": 1}
    svc.process(poll(1, streams))
    svc.commit()  # in flight
    svc.process(poll(2, streams))  # pending
    svc.on_revoked([TopicPartition("in", 1)])
    assert sink.calls == ["start", "wait", "start", "wait"] and len(sink.committed) == 2
    assert sorted(svc.engine.store.streams()) == ["a"] and svc.partition_of == {"a": 0}
    assert not svc.processor.pending
