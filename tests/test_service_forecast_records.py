"""Forecast records as the service encodes them (no broker): valid JSON equal to the model's own forward pass."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from kafka import TopicPartition

from streamer.config import load_settings
from streamer.kafka.polling import Poller
from streamer.models import ModelConfig, build_model
from streamer.service import Service

T0 = 1_700_000_000_000


def _records(streams: int, per_stream: int, n_features: int, seed: int = 0) -> tuple[list, np.ndarray]:
    values = np.random.default_rng(seed).normal(size=(streams, per_stream, n_features)).astype(np.float32)
    recs = []
    for t in range(per_stream):  # interleaved across streams, as a poll would return them
        for s in range(streams):
            body = {"stream": f"s{s}", "ts": T0 + 1000 * t, "values": values[s, t].tolist()}
            recs.append(SimpleNamespace(value=json.dumps(body).encode(), key=f"s{s}".encode(), topic="in",
                                        partition=0, offset=len(recs), timestamp=T0))
    return recs, values


def _service(horizon: int, n_features: int, records: str = "batch") -> tuple[Service, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=n_features, hidden=8, heads=("forecast",),
                                    horizon=horizon)).eval()
    settings = load_settings(kafka={"forecast_topic": "fc"}, engine={"device": "cpu"},
                             output={"anomalies": False, "forecast_records": records}, metrics={"enabled": False})
    return Service(settings, model=model), model


def _forecasts(service: Service) -> dict[str, list]:
    by_stream: dict[str, list] = {}
    for rec in service.pending_records():
        if rec.topic == "fc":
            msg = json.loads(rec.value)
            fc = msg["forecast"] if isinstance(msg["ts"], list) else [msg["forecast"]]
            by_stream.setdefault(msg["stream"], []).extend(fc)
    return by_stream


@pytest.mark.parametrize(("horizon", "n_features"), [(1, 1), (3, 1), (2, 2)])
@pytest.mark.parametrize("records", ["batch", "input"])
def test_forecast_values_equal_the_models_forward_pass(horizon, n_features, records):
    service, model = _service(horizon, n_features, records)
    recs, values = _records(streams=3, per_stream=7, n_features=n_features)
    service.process(recs[:10])  # two polls: state carried between them
    service.process(recs[10:])
    got = _forecasts(service)
    with torch.no_grad():
        want, _ = model(torch.from_numpy(values))
    want = want["forecast"].reshape(3, 7, horizon, n_features).numpy()
    for s in range(3):
        assert np.asarray(got[f"s{s}"]).shape == (7, horizon, n_features)
        np.testing.assert_allclose(np.asarray(got[f"s{s}"]), want[s], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("records", ["batch", "input"])
def test_every_third_forecast_of_several_steps_and_channels(records):
    service, model = _service(2, 2, records)
    service.settings.output.forecast_every = 3
    recs, values = _records(streams=3, per_stream=7, n_features=2)
    service.process(recs[:10])
    service.process(recs[10:])
    got = _forecasts(service)
    with torch.no_grad():
        want, _ = model(torch.from_numpy(values))
    want = want["forecast"].reshape(3, 7, 2, 2).numpy()
    for s in range(3):  # readings 3 and 6 of each stream (1-based): rows 2 and 5
        np.testing.assert_allclose(np.asarray(got[f"s{s}"]), want[s][2::3], rtol=1e-7, atol=1e-7)


def test_non_finite_forecasts_become_null():
    service, model = _service(1, 1)
    with torch.no_grad():
        model.heads["forecast"].bias.fill_(float("inf"))
    recs, _ = _records(streams=2, per_stream=3, n_features=1)
    service.process(recs)
    got = _forecasts(service)
    assert got == {"s0": [[[None]]] * 3, "s1": [[[None]]] * 3}


class _Consumer:
    """Stands in for KafkaConsumer poll/assignment/seek: returns `fresh`, rebalancing first when asked (a revocation
    reaches the poller as the Kafka session's rebalance listener reports it)."""

    def __init__(self, poller: Poller, fresh: list, rebalance: bool, held: set) -> None:
        self.poller, self.fresh, self.rebalance, self.held = poller, fresh, rebalance, held
        self.sought: dict[int, int] = {}

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if self.rebalance:
            self.poller.revoked()
        return {"in": self.fresh[:max_records]}

    def assignment(self) -> set:
        return {TopicPartition("in", p) for p in self.held}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assignment()
        self.sought[tp.partition] = offset


def _on_partitions(recs: list) -> list:
    for r in recs:  # stream s<i> on partition i
        r.partition = int(r.key.decode()[1:])
    return recs


def test_a_batch_is_topped_up_with_what_arrived_since():
    poller = Poller(threading.Event())
    recs = _on_partitions(_records(streams=2, per_stream=4, n_features=1)[0])
    consumer = _Consumer(poller, recs[4:], rebalance=False, held={0, 1})
    assert poller.top_up(consumer, recs[:4], max_records=100) == recs
    assert consumer.sought == {}


@pytest.mark.parametrize("held", [{0, 1, 2}, {1, 2}, {2}], ids=["kept_both", "lost_one", "lost_both"])
def test_a_rebalance_inside_the_top_up_rewinds_the_partitions_still_held(held):
    poller = Poller(threading.Event())
    recs = _on_partitions(_records(streams=3, per_stream=4, n_features=1)[0])
    first = [r for r in recs[:6] if r.partition < 2]  # partitions 0 and 1, offsets 0, 1, 3, 4
    fresh = [r for r in recs[6:] if r.partition in held]  # after the rebalance: partitions held now
    consumer = _Consumer(poller, fresh, rebalance=True, held=held)
    got = poller.top_up(consumer, first, max_records=100)
    # the first records are given up; partitions still held restart at them, fresh ones of theirs come again
    assert consumer.sought == {p: min(r.offset for r in first if r.partition == p) for p in held if p < 2}
    assert got == [r for r in fresh if r.partition == 2]


class _LateMetadata:
    """A consumer whose metadata holds the topic only from the `ready_after`-th lookup on."""

    def __init__(self, ready_after: int) -> None:
        self.lookups, self.ready_after = 0, ready_after

    def partitions_for_topic(self, topic: str) -> set:
        self.lookups += 1
        return {0, 1} if self.lookups >= self.ready_after else set()


def test_the_first_join_waits_for_the_input_topics_metadata():
    """dpkp/kafka-python#2377: a leader without the topic's metadata assigns nothing and never rejoins."""
    from kafka.errors import KafkaError

    poller = Poller(threading.Event())
    consumer = _LateMetadata(ready_after=3)
    poller.await_metadata(consumer, ["in"], timeout_s=10.0)
    assert consumer.lookups == 3
    with pytest.raises(KafkaError, match="no partition metadata for input topics"):
        poller.await_metadata(_LateMetadata(ready_after=10**9), ["in"], timeout_s=0.3)
