"""`streamer replay`: CSV and NumPy series produced into a real topic as readings or chunks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import DataError
from streamer.kafka.replay import load_series
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
    with pytest.raises(DataError, match="pickle"):
        load_series(tmp_path / "evil.npy")


def replay_cli(*files: Path) -> subprocess.CompletedProcess:
    """`streamer replay FILES` in a child process; the files are read before any broker is contacted."""
    return subprocess.run([sys.executable, "-m", "streamer.cli", "replay", *map(str, files), "--topic", "t",
                           "--bootstrap", "127.0.0.1:1", "--quiet"], capture_output=True, text=True, timeout=120)


def test_replay_of_a_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-series.csv"
    proc = replay_cli(missing)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"streamer: {missing}: No such file or directory"]


@pytest.mark.parametrize(("row", "why"), [("2015-01-01 00:02:00,1.5,n/a", "column 'b': 'n/a' is not a number"),
                                          ("yesterday,1.5,2", "timestamp 'yesterday' is neither"),
                                          ("2015-01-01 00:02:00,1.5", "2 fields, the header has 3")])
def test_replay_of_a_bad_csv_row_names_the_file_and_line(tmp_path: Path, row: str, why: str) -> None:
    bad = tmp_path / "series.csv"
    bad.write_text(f"timestamp,a,b\n2015-01-01 00:00:00,1,2\n\n2015-01-01 00:01:00,1,2\n{row}\n")
    proc = replay_cli(NAB / "ec2_cpu_utilization_24ae8d.csv", bad)
    assert proc.returncode != 0 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"streamer: {bad}, line 5") and why in line, line


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
