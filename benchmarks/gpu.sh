#!/usr/bin/env bash
# The GPU path in one run: the CUDA tests, the engine's throughput at 10k, 100k and 1M resident streams (LSTM and
# GRU, hidden 64 and 128) with each stream's state bytes on the device, and the daemon's per-batch work
# (benchmarks.process) with the engine on the device. Prints the steps' tables, then one JSON summary as the
# last line (also written to --out FILE).
#
#   benchmarks/gpu.sh [--device cuda|cpu] [--out FILE]
#
# --device cpu is the dry run CI makes: the same steps on the CPU at small sizes (the CUDA tests skip), so the
# script is known to work before a GPU machine is lent for its few minutes. PYTHON picks the interpreter
# (default .venv/bin/python, else python3).
set -euo pipefail

device=cuda
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "gpu.sh: --device is cuda or cpu, not $device" >&2; exit 2 ;; esac

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ "$device" = cuda ]; then
  "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "gpu.sh: torch sees no CUDA device (use --device cpu for the dry run)" >&2; exit 2; }
  streams=(10000 100000 1000000); reps=3; process_streams=(1000 10000); batches=20
else
  streams=(1000 2000); reps=2; process_streams=(200); batches=3
fi

echo "== CUDA tests (pytest -m cuda)"
set +e
"$py" -m pytest -q -m cuda -p no:cacheprovider tests/ > "$work/tests.log" 2>&1
tests_rc=$?
set -e
tail -n 3 "$work/tests.log"

echo "== engine: ${streams[*]} streams, LSTM and GRU, hidden 64 and 128"
"$py" -m benchmarks.engine --device "$device" --streams "${streams[@]}" --families lstm gru --hiddens 64 128 \
  --reps "$reps" --warm 2 --no-river --no-memory --json | tee "$work/engine.log"

echo "== the daemon's work per batch, engine on $device"
"$py" -m benchmarks.process --device "$device" --streams "${process_streams[@]}" --batches "$batches" --json \
  | tee "$work/process.log"

"$py" - "$device" "$tests_rc" "$work" "$out" <<'EOF'
import json, re, sys
from pathlib import Path

import torch

device, tests_rc, work, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
last_json = lambda name: json.loads((work / name).read_text().strip().splitlines()[-1])
engine, process = last_json("engine.log"), last_json("process.log")
tail = (work / "tests.log").read_text().strip().splitlines()[-1:] or [""]
counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0])}
cases = [{k: c[k] for k in ("family", "hidden", "streams", "engine_readings_per_s", "ceiling_readings_per_s",
                            "engine_vs_ceiling", "state_bytes_per_stream")} for c in engine["cases"]]
largest = max(c["streams"] for c in cases)
summary = {
    "device": device,
    "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
    "torch": torch.__version__,
    "cuda_tests": {"exit_code": tests_rc, **counts},
    "engine_cases": cases,
    "largest_streams": largest,
    "engine_readings_per_s_at_largest": max(c["engine_readings_per_s"] for c in cases if c["streams"] == largest),
    "state_bytes_per_stream_max": max(c["state_bytes_per_stream"] for c in cases),
    "process": process,
}
text = json.dumps(summary)
if out:
    Path(out).write_text(text + "\n")
print(text)
sys.exit(0 if tests_rc == 0 else 1)  # a failed CUDA test, or none collected (5), fails the run
EOF
