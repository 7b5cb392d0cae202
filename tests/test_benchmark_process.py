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


def test_chunk_records_carry_their_readings_and_warm_fills_the_seasonal_memories():
    """--chunk 8: records of 8 readings of one stream, all decoded; --warm: each stream's seasonal memories hold
    readings a day back before the timed batches."""
    from streamer.detectors.seasonal import memory_length

    recs = batches(streams=4, per_batch=64, n=1, chunk=8)[0]
    assert len(recs) == 8 and all(r.value.count(b",") >= 14 for r in recs)
    got = measure(streams=4, per_batch=64, n=2, hidden=8, chunk=8, warm=400)
    assert got["batch_readings"] == 64 and got["chunk"] == 8 and got["warm"] == 400
    svc = service(anomalies=True, hidden=8)
    for recs in batches(streams=2, per_batch=64, n=7, chunk=32, ago_ms=10**9, every_ms=300_000):
        svc.process(recs)
    svc.commit()
    extras = [svc.engine.store.get_extra(s) for s in svc.engine.store.streams()]
    assert len(extras) == 2 and all(memory_length(e["anomaly"]["season"]) >= 200 for e in extras)
