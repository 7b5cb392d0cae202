"""benchmarks/gpu.sh --device cpu: the dry run of the GPU script, so that it is known to work before a GPU
machine is lent for its few minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_on_the_cpu_and_prints_one_summary(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary == json.loads(out.read_text())
    assert summary["device"] == "cpu" and summary["cuda_tests"]["exit_code"] == 0
    assert summary["cuda_tests"].get("skipped", 0) + summary["cuda_tests"].get("passed", 0) >= 4  # found, not run
    cases = {(c["family"], c["hidden"], c["streams"]) for c in summary["engine_cases"]}
    assert cases == {(f, h, n) for f in ("lstm", "gru") for h in (64, 128) for n in (1000, 2000)}
    assert all(c["engine_readings_per_s"] > 0 for c in summary["engine_cases"])
    # state on the device: h (GRU) or h and c (LSTM), float32, hidden units each
    assert {(c["family"], c["hidden"], c["state_bytes_per_stream"]) for c in summary["engine_cases"]} >= {
        ("gru", 64, 256), ("lstm", 128, 1024)}
    assert summary["process"]["shapes"][0]["ms_per_batch"] > 0


def test_the_gpu_script_refuses_an_unknown_device() -> None:
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "tpu"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 2 and "--device is cuda or cpu" in run.stderr
