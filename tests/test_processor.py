"""The broker-free processor: records in; dead letters, forecasts, alerts and changed streams out (in `pending`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from streamer.config import load_settings
from streamer.detection import StreamDetectors
from streamer.engine import Engine
from streamer.model_source import wrap_model
from streamer.models import ModelConfig, build_model
from streamer.processor import Processor

T0 = 1_700_000_000_000


class Recorded:
    """Hooks that remember what they were told."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.health: list[int] = []

    def stepped(self, seconds: float, readings: int) -> None:
        assert seconds >= 0.0
        self.steps.append(readings)

    def observe_model_health(self, version, errors, scores, alerts) -> None:
        self.health.append(0 if scores is None else len(scores))


def processor(anomalies: bool = True, hooks: Recorded | None = None, **kw) -> Processor:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=1, hidden=8, heads=("forecast",), horizon=1)).eval()
    served = wrap_model(model, "gru-h8", "test")
    settings = load_settings(kafka={"forecast_topic": "fc", "dead_letter_topic": "dlq"},
                             output={"anomalies": anomalies}, metrics={"enabled": False})
    detectors = StreamDetectors(1, model.config.heads, served.name, served.version, anomalies=anomalies)
    return Processor(settings, served, Engine.from_model(model, capacity=100, device="cpu"), detectors, hooks, **kw)


def rec(body: object, partition: int = 0, offset: int = 0, key: bytes | None = None) -> SimpleNamespace:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return SimpleNamespace(value=value, key=key, topic="in", partition=partition, offset=offset, timestamp=T0)


def reading(stream: str, t: int, v: float = 0.5, partition: int = 0) -> SimpleNamespace:
    return rec({"stream": stream, "ts": T0 + t, "values": [v]}, partition, t, stream.encode())


def test_bad_records_become_dead_letters_and_good_ones_forecasts_in_one_poll() -> None:
    hooks = Recorded()
    p = processor(hooks=hooks)
    p.process([reading("a", 1), rec(b"{not json", offset=5), reading("b", 1, partition=1),
               rec({"stream": "a", "ts": T0 + 2, "values": [1, 2]}, offset=6)])
    work = p.take()
    by_topic: dict[str, list[dict]] = {}
    for r in work.records:
        by_topic.setdefault(r.topic, []).append(json.loads(r.value))
    assert sorted(m["reason"] for m in by_topic["dlq"]) == ["invalid_json", "wrong_shape"]
    assert sorted(m["stream"] for m in by_topic["fc"]) == ["a", "b"]
    assert work.changed == {"a": 0, "b": 1} and work.readings == 2
    assert work.reasons == {"invalid_json": 1, "wrong_shape": 1} and work.kinds["forecast"] == 2
    assert hooks.steps == [2] and hooks.health == [2]
    assert not p.pending  # take() handed the work over


def test_late_and_duplicate_readings_are_refused_across_polls() -> None:
    p = processor(anomalies=False)
    p.process([reading("a", 5)])
    p.process([reading("a", 5), reading("a", 3), reading("a", 6)])
    work = p.take()
    assert work.out_of_order == {"duplicate": 1, "late": 1}
    assert work.reasons == {"duplicate_ts": 1, "out_of_order": 1} and work.readings == 2


def test_forgetting_partitions_drops_their_streams_only() -> None:
    p = processor(anomalies=False)
    p.process([reading("a", 1, partition=0), reading("b", 1, partition=1), reading("c", 1, partition=1)])
    p.forget_partitions({1})
    assert p.partition_of == {"a": 0}
    assert set(p.engine.store.streams()) == {"a"}
    p.process([reading("b", 1, partition=1)])  # a returning stream starts again: its ts 1 is new
    assert p.take().reasons == {}


def test_forecast_records_are_placed_with_the_runners_partitioner() -> None:
    p = processor(anomalies=False, partition_for=lambda key, n: len(key) % n)
    p.set_forecast_partitions(4)
    p.process([reading("abc", 1), reading("ab", 1)])
    parts = {json.loads(r.value)["stream"]: r.partition for r in p.take().records}
    assert parts == {"abc": 3, "ab": 2}
    q = processor(anomalies=False)
    q.set_forecast_partitions(4)
    with pytest.raises(ValueError, match="partitioner"):
        q.process([reading("x", 1)])


def test_a_reset_forgets_the_uncommitted_work_and_every_stream() -> None:
    p = processor()
    p.process([reading("a", t, float(np.sin(t))) for t in range(1, 50)])
    assert p.pending and p.partition_of
    p.reset()
    assert not p.pending and not p.partition_of and not p.firing
