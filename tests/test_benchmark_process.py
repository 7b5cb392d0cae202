"""benchmarks.process: the per-batch timing runs the daemon's real processing and commit snapshots."""

from __future__ import annotations

from benchmarks.process import NoCommit, batches, measure, service


def test_a_batch_yields_a_forecast_and_a_state_record_per_stream():
    svc = service(anomalies=True, hidden=8)
    sink = NoCommit()
    svc.use_committer(sink)
    svc.process(batches(streams=20, per_batch=60, n=1)[0])
    svc.commit()
    assert sink.records == 20 + 20  # one forecast record per stream per batch, one snapshot each


def test_measure_reports_both_services_per_batch():
    got = measure(streams=20, per_batch=60, n=3, hidden=8)
    assert got["ms_per_batch"] > 0 and got["ms_per_batch_no_anomalies"] > 0
    assert got["us_per_reading"] == got["ms_per_batch"] * 1000 / 60
    assert got["anomaly_share"] < 1
