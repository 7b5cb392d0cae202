"""Forecast records as the service encodes them (no broker): valid JSON equal to the model's own forward pass."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from streamer.config import load_settings
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
    for rec in service._pending.records:
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


def test_non_finite_forecasts_become_null():
    service, model = _service(1, 1)
    with torch.no_grad():
        model.heads["forecast"].bias.fill_(float("inf"))
    recs, _ = _records(streams=2, per_stream=3, n_features=1)
    service.process(recs)
    got = _forecasts(service)
    assert got == {"s0": [[[None]]] * 3, "s1": [[[None]]] * 3}


class _Consumer:
    """Stands in for KafkaConsumer.poll/assignment: returns `fresh`, rebalancing first when asked."""

    def __init__(self, service: Service, fresh: list, rebalance: bool, owned: set) -> None:
        self.service, self.fresh, self.rebalance, self.owned = service, fresh, rebalance, owned

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if self.rebalance:
            from kafka import TopicPartition

            self.service.on_revoked([TopicPartition("in", p) for p in (0, 1)])
        return {"in": self.fresh[:max_records]}

    def assignment(self) -> set:
        from kafka import TopicPartition

        return {TopicPartition("in", p) for p in self.owned}


def _on_partitions(recs: list) -> list:
    for r in recs:  # streams s0 and s1 on partitions 0 and 1
        r.partition = int(r.key.decode()[1:])
    return recs


@pytest.mark.parametrize(("rebalance", "owned", "kept"), [
    (False, {0, 1}, {0, 1}), (True, {0, 1}, {0, 1}), (True, {1}, {1}), (True, set(), set())],
    ids=["no_rebalance", "rebalanced_kept_both", "rebalanced_lost_one", "rebalanced_lost_all"])
def test_a_batch_is_topped_up_keeping_only_partitions_still_owned(rebalance, owned, kept):
    service, _ = _service(1, 1)
    recs = _on_partitions(_records(streams=2, per_stream=4, n_features=1)[0])
    first, fresh = recs[:4], [r for r in recs[4:] if r.partition in owned or not rebalance]
    got = service._top_up(_Consumer(service, fresh, rebalance, owned), first, max_records=100)
    assert got == [r for r in first if r.partition in kept] + fresh


def test_a_top_up_after_a_rebalance_skips_records_it_already_holds():
    service, _ = _service(1, 1)
    recs = _on_partitions(_records(streams=2, per_stream=4, n_features=1)[0])
    # a client that reset the position to the committed offset would return the first records again
    got = service._top_up(_Consumer(service, recs, True, {0, 1}), recs[:4], max_records=100)
    assert got == recs
