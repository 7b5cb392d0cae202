"""Model health in the metrics: forecast absolute error and anomaly score histograms (by model version), anomaly
alerts fired by severity, and hot-reload attempts and failures, as the running service exports them."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from streamer.checkpoints import save
from streamer.config import load_settings
from streamer.detection import PRODUCT_PIPELINE
from streamer.detectors.pipeline import AnomalyPipeline
from streamer.models import ModelConfig, build_model
from streamer.service import Service
from tests.helpers import as_records, serve_in_thread


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(exposition) for s in f.samples}


def _readings(streams: int, per_stream: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(per_stream)
    base = np.stack([np.sin(t / 7.0), np.cos(t / 11.0)], axis=1)
    values = base[None] + 0.05 * rng.normal(size=(streams, per_stream, 2))
    values[0, per_stream - 30] += 25.0  # one stream jumps far from anything it has seen: an alert
    return values.astype(np.float32)


def test_forecast_error_score_and_alert_metrics_match_an_independent_computation():
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gru", n_features=2, hidden=8, heads=("forecast",))).eval()
    settings = load_settings(engine={"device": "cpu"}, metrics={"enabled": False})
    service = Service(settings, model=model)
    streams, n = 3, 300
    values = _readings(streams, n)
    bodies = [{"stream": f"s{s}", "ts": 1_000 + 1_000 * t, "values": values[s, t].tolist()}
              for t in range(n) for s in range(streams)]
    for a in range(0, len(bodies), 200):  # polls of 200 records: state carried across them
        service.process(as_records(bodies[a:a + 200]))

    # Independently: the model's forward pass over each whole stream, and the per-stream anomaly pipeline.
    with torch.no_grad():
        out, _ = model(torch.from_numpy(values))
    forecast = out["forecast"].reshape(streams, n, 2).numpy().astype(np.float64)
    errors = np.abs(values[:, 1:].astype(np.float64) - forecast[:, :-1])  # the forecast made at t-1 for t
    pipe = AnomalyPipeline(2, PRODUCT_PIPELINE)
    scores, fired = [], {"warning": 0, "critical": 0}
    for s in range(streams):
        res = pipe.score(pipe.init_state(), np.arange(n) * 1000 + 1000, values[s], forecast[s])
        scores.append(res["score"])
        for alert in res["alerts"]:
            fired[alert["severity"]] += alert["state"] == "firing"
    assert sum(fired.values()) >= 1, "the jump must open an alert, or the counter is not tested"

    got = samples(service.metrics.render().decode())
    version = (("version", service.served.version),)
    assert got[("streamer_forecast_absolute_error_count", version)] == errors.size == streams * (n - 1) * 2
    np.testing.assert_allclose(got[("streamer_forecast_absolute_error_sum", version)], errors.sum(), rtol=1e-4)
    below = got[("streamer_forecast_absolute_error_bucket", (("le", "0.5"), *version))]
    assert below == np.count_nonzero(errors <= 0.5) < errors.size
    assert got[("streamer_anomaly_score_count", version)] == streams * n
    np.testing.assert_allclose(got[("streamer_anomaly_score_sum", version)], np.concatenate(scores).sum(),
                               rtol=1e-6, atol=1e-9)
    for severity, count in fired.items():
        assert got[("streamer_alerts_fired_total", (("severity", severity),))] == count, severity
    assert not any("stream" in dict(labels) for _, labels in got), "no stream id label"


def _checkpoint(directory: Path, numeric: list[str], seed: int) -> None:
    torch.manual_seed(seed)
    cfg = ModelConfig(family="gru", n_features=len(numeric), hidden=4, heads=("forecast",))
    save(directory, build_model(cfg), {"features": {"numeric": numeric}, "horizon": 1, "name": "m",
                                       "normalization": {"mean": [0.0] * len(numeric), "std": [1.0] * len(numeric)}})


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return samples(resp.read().decode())


def _wait_for(port: int, predicate, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    got = _scrape(port)
    while not predicate(got) and time.monotonic() < deadline:
        time.sleep(0.1)
        got = _scrape(port)
    return got


def test_hot_reload_attempts_and_failures_are_counted(kafka_bootstrap, new_topic, tmp_path: Path):
    """A running service finds a checkpoint it cannot serve (failure, old model kept), then a good one."""
    src = new_topic("health-in")
    run = uuid.uuid4().hex[:8]
    ckpt = tmp_path / "model"
    _checkpoint(ckpt, ["a", "b"], seed=0)
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [src], "group_id": f"g-{run}",
               "transactional_id": f"tx-{run}", "forecast_topic": f"fc-{run}", "dead_letter_topic": f"dl-{run}"},
        model={"checkpoint": str(ckpt), "reload_interval_s": 0.1},
        engine={"device": "cpu", "max_wait_ms": 20, "state_dir": str(tmp_path / "state")}, metrics={"port": 0})
    service = Service(settings)
    first = service.served.version
    thread = serve_in_thread(service)
    try:
        port = service.http.port
        got = _scrape(port)
        assert got[("streamer_model_reload_attempts_total", ())] == 0
        assert got[("streamer_model_reload_failures_total", ())] == 0
        _checkpoint(ckpt, ["a", "@weekend"], seed=1)  # derived inputs: refused at a hot reload
        got = _wait_for(port, lambda g: g[("streamer_model_reload_failures_total", ())] >= 1)
        assert got[("streamer_model_reload_failures_total", ())] >= 1
        assert got[("streamer_model_reload_attempts_total", ())] >= got[("streamer_model_reload_failures_total", ())]
        assert ("streamer_model_info", (("family", "gru"), ("name", "m"), ("version", first))) in got
        _checkpoint(ckpt, ["a", "b"], seed=2)  # a servable one: loaded, no new failure
        got = _wait_for(port, lambda g: ("streamer_model_info", (("family", "gru"), ("name", "m"), ("version", first)))
                        not in g)
        failures = got[("streamer_model_reload_failures_total", ())]
        assert got[("streamer_model_reload_attempts_total", ())] == failures + 1
        versions = {dict(labels)["version"] for name, labels in got if name == "streamer_forecast_absolute_error_count"}
        assert versions == {first, service.served.version}, "a zero series per version served"
        time.sleep(0.5)
        assert _scrape(port)[("streamer_model_reload_attempts_total", ())] == failures + 1, "no retry once served"
    finally:
        service.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
