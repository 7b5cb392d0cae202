"""`streamer replay`: CSV and NumPy series produced into a real topic as readings or chunks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from streamer.replay import load_series
from tests.helpers import collect

ROOT = Path(__file__).resolve().parents[1]
NAB = ROOT / "data" / "nab" / "realAWSCloudwatch"


def test_npy_rows_are_stamped_and_never_unpickled(tmp_path):
    arr = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "chan-1.npy", arr)
    stream, ts, values, channels = load_series(tmp_path / "chan-1.npy", start_ms=1000, step_ms=10)
    assert stream == "chan-1" and ts.tolist() == [1000, 1010, 1020, 1030] and channels == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(values, arr.astype(np.float32))
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    try:
        load_series(tmp_path / "evil.npy")
    except ValueError as exc:
        assert "pickle" in str(exc).lower()
    else:
        raise AssertionError("an object array was loaded")


def test_replay_cli_produces_csv_and_npy_as_chunks(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic("replayed")
    np.save(tmp_path / "sat-A.npy", np.ones((10, 2)))
    csv = sorted(NAB.glob("*.csv"))[0]
    n_csv = len(load_series(csv)[1])
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "replay", str(csv), str(tmp_path / "sat-A.npy"),
                           "--topic", topic, "--chunk", "8", "--bootstrap", kafka_bootstrap, "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"replayed {n_csv + 10} readings of 2 streams" in proc.stdout
    records = collect(kafka_bootstrap, [topic], n_csv // 8 + 4, timeout=30)[topic]
    by_stream: dict[str, int] = {}
    for r in records:
        assert len(r["ts"]) == len(r["values"]) <= 8
        by_stream[r["stream"]] = by_stream.get(r["stream"], 0) + len(r["ts"])
    assert by_stream == {csv.stem: n_csv, "sat-A": 10}
