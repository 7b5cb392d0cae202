"""Prometheus metrics of the daemon and the one HTTP port that serves /metrics, /healthz and /readyz.

Each Service owns a Metrics object with its own registry (so tests can run several services in one
process). Names follow Prometheus conventions: `streamer_` prefix, base units, `_total` on counters,
and never a stream id as a label (thousands of streams would explode the series count).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from streamer.errors import ConfigError
from streamer.schema import DEAD_LETTER_REASONS

if TYPE_CHECKING:
    from streamer.processor import Pending

log = logging.getLogger(__name__)

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_READINGS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
# |reading - forecast| in the model's normalised units (training standard deviations of the channel)
_ABS_ERROR = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
_SCORE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
FAST_PATHS = ("decode", "append", "offsets")  # streamer.kafka.fast_paths: its three paths
SEVERITIES = ("warning", "critical")  # what streamer.detectors.alerts.AlertLifecycle puts in an alert


class ArrayHistogram:
    """A histogram with one label, observed a whole array at a time: a numpy bucketing per step instead of a
    locked observe() per reading (a batch holds up to tens of thousands of readings)."""

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._series: dict[str, list[Any]] = {}  # label value -> [bucket counts (not cumulative) + +Inf, sum]
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, value: str) -> None:
        """Create the series of `value` (zero observations), so that it is exported before the first one."""
        with self._lock:
            self._series.setdefault(value, [np.zeros(len(self.bounds) + 1, dtype=np.int64), 0.0])

    def observe_many(self, value: str, samples: np.ndarray) -> None:
        """Observe every finite number of `samples` (any shape) in the series of label value `value`."""
        x = np.asarray(samples, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        counts = np.bincount(np.searchsorted(self.bounds, x, side="left"), minlength=len(self.bounds) + 1)
        total = float(x.sum())
        self.labels(value)
        with self._lock:
            series = self._series[value]
            series[0] += counts
            series[1] += total

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """The family, without samples (for the registry's check of duplicate names)."""
        yield HistogramMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The family with a cumulative histogram per label value."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            series = [(k, c.copy(), s) for k, (c, s) in self._series.items()]
        for value, counts, total in series:
            cum = np.cumsum(counts).tolist()
            bounds = [*(repr(float(b)) for b in self.bounds), "+Inf"]
            family.add_metric([value], list(zip(bounds, cum, strict=True)), total)
        yield family


class Metrics:
    """Every metric `streamer serve` exports, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._throughput(r)
        self._commits_and_state(r)
        self._model_health(r)
        for severity in SEVERITIES:
            self.alerts_fired.labels(severity)
        for kind in ("forecast", "alert", "event", "state", "dead_letter"):
            self.outputs.labels(kind)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for kind in ("late", "duplicate"):
            self.out_of_order.labels(kind)
        for event in ("assigned", "revoked"):
            self.rebalances.labels(event)
        for path in FAST_PATHS:
            self.kafka_fast_path.labels(path=path)

    def _throughput(self, r: CollectorRegistry) -> None:
        """What was read, published, dead-lettered, and how long steps and outputs took."""
        self.readings = Counter("streamer_readings_consumed_total", "Readings decoded from the input topics",
                                registry=r)
        self.outputs = Counter("streamer_outputs_produced_total", "Records published, by kind", ["kind"],
                               registry=r)
        self.dead_letters = Counter("streamer_dead_letters_total", "Input records sent to the dead-letter topic",
                                    ["reason"], registry=r)
        self.out_of_order = Counter("streamer_out_of_order_readings_total",
                                    "Readings not after their stream's last timestamp (dead-lettered)", ["kind"],
                                    registry=r)
        self.batch_readings = Histogram("streamer_batch_readings", "Readings per engine step", buckets=_READINGS,
                                        registry=r)
        self.step_seconds = Histogram("streamer_step_duration_seconds", "Duration of one batched engine step",
                                      buckets=_SECONDS, registry=r)
        self.latency = Histogram("streamer_record_to_output_latency_seconds",
                                 "From an input record's Kafka timestamp to the commit of its outputs (sampled)",
                                 buckets=_LATENCY, registry=r)

    def _commits_and_state(self, r: CollectorRegistry) -> None:
        """Commits, the state store, restores, rebalances, lag, readiness and the Kafka fast paths."""
        self.commit_seconds = Histogram("streamer_transaction_commit_duration_seconds",
                                        "Duration of publishing and committing one unit of work", buckets=_SECONDS,
                                        registry=r)
        self.commit_failures = Counter("streamer_commit_failures_total",
                                       "Commits that failed (the work is redone from the last commit)", registry=r)
        self.failed_commits_in_row = Gauge(
            "streamer_failed_commits_in_row", "Commits that failed since the last one that succeeded (/healthz "
            "fails at STREAMER_METRICS__UNHEALTHY_AFTER_FAILED_COMMITS)", registry=r)
        self.active_streams = Gauge("streamer_active_streams", "Streams resident in the state store", registry=r)
        self.evictions = Counter("streamer_evictions_total", "Streams evicted from the state store", registry=r)
        self.restored = Counter("streamer_restored_records_total", "Changelog records read while restoring state",
                                registry=r)
        self.restore_remaining = Gauge(
            "streamer_restore_remaining_records", "Changelog records left to read before a partition is processed",
            ["partition"], registry=r)
        self.rebalances = Counter("streamer_rebalances_total", "Partition assignments and revocations", ["event"],
                                  registry=r)
        self.lag = Gauge("streamer_consumer_lag_records", "Records between the consumer position and the end",
                         ["topic", "partition"], registry=r)
        self.ready = Gauge("streamer_ready", "1 when partitions are assigned, state restored and a model loaded",
                           registry=r)
        self.alerts_firing = Gauge("streamer_alerts_firing", "Anomaly alerts currently firing", registry=r)
        self.kafka_fast_path = Gauge(
            "streamer_kafka_fast_path", "1 while a fast path over kafka-python's internals is in use, 0 while its "
            "stock path is (the installed kafka-python differs from the one the fast path was written for)", ["path"],
            registry=r)

    def _model_health(self, r: CollectorRegistry) -> None:
        """The served model, how far each reading was from its forecast, how surprising it was, what fired."""
        self.model_info = Gauge("streamer_model_info", "The served model (value 1)", ["name", "version", "family"],
                                registry=r)
        self.forecast_error = ArrayHistogram(
            "streamer_forecast_absolute_error", "|reading - its one-step forecast| per channel, in training "
            "standard deviations (readings scored for anomalies), by model version", "version", _ABS_ERROR, r)
        self.anomaly_score = ArrayHistogram("streamer_anomaly_score", "Anomaly score of each scored reading (0-1), "
                                            "by model version", "version", _SCORE, r)
        self.alerts_fired = Counter("streamer_alerts_fired_total", "Anomaly alerts opened, by severity",
                                    ["severity"], registry=r)
        self.reload_attempts = Counter("streamer_model_reload_attempts_total",
                                       "Loads tried of a new checkpoint found at the checkpoint path", registry=r)
        self.reload_failures = Counter("streamer_model_reload_failures_total",
                                       "New checkpoints that could not be loaded or served (the old model stays)",
                                       registry=r)

    def set_model(self, name: str, version: str, family: str) -> None:
        """Record the served model, replacing the previous one."""
        self.model_info.clear()
        self.model_info.labels(name, version, family).set(1)
        self.forecast_error.labels(version)
        self.anomaly_score.labels(version)

    def stepped(self, seconds: float, readings: int) -> None:
        """One engine step's duration and size."""
        self.step_seconds.observe(seconds)
        self.batch_readings.observe(readings)

    def observe_model_health(self, version: str, errors: np.ndarray | None, scores: np.ndarray | None,
                             alerts: list[dict[str, Any]]) -> None:
        """One step's forecast errors and anomaly scores (of model `version`) and the alerts it opened."""
        if errors is not None:
            self.forecast_error.observe_many(version, errors)
        if scores is not None:
            self.anomaly_score.observe_many(version, scores)
        for a in alerts:
            if a["state"] == "firing":
                self.alerts_fired.labels(a["severity"]).inc()

    def set_lags(self, lags: dict[Any, int]) -> None:
        """The consumer lag of each assigned partition (TopicPartition -> records left)."""
        for tp, lag in lags.items():
            self.lag.labels(tp.topic, str(tp.partition)).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Stop exporting the lag and restore gauges of a partition this instance no longer holds."""
        for gauge, labels in ((self.lag, (topic, str(partition))), (self.restore_remaining, (str(partition),))):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    def fast_paths(self, in_use: dict[str, bool]) -> None:
        """The streamer_kafka_fast_path gauge, and a warning per fast path the installed kafka-python rules out."""
        for path, on in in_use.items():
            self.kafka_fast_path.labels(path=path).set(1 if on else 0)
            if not on:
                log.warning("kafka-python's stock path in use: its internals differ from those the fast path was "
                            "written for (slower, same results)", extra={"path": path})

    def committed(self, p: Pending, n_state: int, seconds: float) -> None:
        """A unit of work committed: what it published, how long the commit took and each reading's latency."""
        done = time.time()
        self.failed_commits_in_row.set(0)
        self.commit_seconds.observe(seconds)
        self.readings.inc(p.readings)
        for kind, n in p.kinds.items():
            self.outputs.labels(kind).inc(n)
        self.outputs.labels("state").inc(n_state)
        for reason, n in p.reasons.items():
            self.dead_letters.labels(reason).inc(n)
        self.outputs.labels("dead_letter").inc(sum(p.reasons.values()))
        for kind, n in p.out_of_order.items():
            self.out_of_order.labels(kind).inc(n)
        for ts in p.stamps:
            self.latency.observe(max(done - ts / 1000, 0.0))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class HealthServer:
    """/metrics, /healthz (the loop is alive) and /readyz (ready to process, else why not) on one port, in a thread.

    It can start before whatever it reports on exists (the daemon opens it before loading torch and the model):
    until `bind` is called it answers alive, and not ready with the reason "starting".
    """

    def __init__(self, metrics: Metrics, host: str, port: int, alive: Callable[[], bool] = lambda: True,
                 ready: Callable[[], bool] = lambda: False, reason: Callable[[], str] = lambda: "starting") -> None:
        self.bind(alive, ready, reason)
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(metrics, self))
        except OSError as exc:
            raise ConfigError(f"STREAMER_METRICS__PORT: cannot listen on {host}:{port}: {exc}") from None
        self.httpd.daemon_threads = True
        # shutdown() waits for serve_forever's next poll: a short one lets the process stop at once
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="streamer-http", daemon=True)

    def bind(self, alive: Callable[[], bool], ready: Callable[[], bool], reason: Callable[[], str]) -> None:
        """Report on these: liveness, readiness, and why it is not ready (the body of a 503 from /readyz)."""
        self.alive, self.ready, self.reason = alive, ready, reason

    @property
    def port(self) -> int:
        """The bound port (useful when 0 asked for any free one)."""
        return self.httpd.server_address[1]

    def start(self) -> HealthServer:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


def _handler(metrics: Metrics, server: HealthServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = server.alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
            elif path == "/readyz":
                ok = server.ready()
                self._send(200 if ok else 503, b"ready\n" if ok else f"not ready: {server.reason()}\n".encode())
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("http " + fmt, *args)

    return Handler
