"""`streamer eval nab` end to end on a small NAB-layout folder built from the shipped series: NAB result layout,
the JSON line, the plots, and the no-look-ahead property of the written scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation import nab
from lab.evaluation import nab_scorer as ns
from tests.helpers import parse_cli

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "nab" / "realAWSCloudwatch"
ROWS = 1200


def small_nab(root: Path, rows: int = ROWS) -> Path:
    """data/<category>/*.csv (the shipped AWS series, first `rows` rows) and labels with one window each."""
    files = sorted(SHIPPED.glob("*.csv"))
    assert len(files) == 3, f"the shipped NAB series are missing from {SHIPPED}"
    windows = {}
    for k, f in enumerate(files):
        lines = f.read_text().splitlines()[: rows + 1]
        dest = root / "data" / "realAWSCloudwatch" / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("\n".join(lines) + "\n")
        stamps = [ln.split(",")[0] for ln in lines[1:]]
        b = (rows // 3) + 100 * k
        windows[f"realAWSCloudwatch/{f.name}"] = [[stamps[b] + ".000000", stamps[b + 80] + ".000000"]]
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_eval_nab_writes_nab_layout_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   one_torch_thread: None) -> None:
    data = small_nab(tmp_path / "nab")
    out = tmp_path / "out"
    args = parse_cli(["eval", "nab", "--data", str(data), "--out", str(out), "--json", "--epochs", "3", "--quiet"])
    assert args.func(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
        assert isinstance(summary[key], float)
    assert set(summary["own_threshold"]) >= {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert summary["files"] == 3 and summary["rows"] == 3 * ROWS
    results = sorted((out / nab.DETECTOR / "realAWSCloudwatch").glob("*.csv"))
    assert [p.name for p in results] == [f"{nab.DETECTOR}_{f.name}" for f in sorted(SHIPPED.glob("*.csv"))]
    with open(results[0], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "value", "anomaly_score", "label"] and len(rows) == ROWS + 1
    scores = np.array([float(r[2]) for r in rows[1:]])
    assert np.all((scores >= 0) & (scores <= 1))
    assert sum(int(r[3]) for r in rows[1:]) == 81  # one window of 81 rows
    assert (out / "best.png").stat().st_size > 0 and (out / "worst.png").stat().st_size > 0
    # the written files score the same through the scorer's reader
    corpus = ns.load_corpus(data)
    again = ns.score_results(out / nab.DETECTOR, nab.DETECTOR, corpus)
    assert again["standard"].score == pytest.approx(summary["standard"], abs=1e-3)


def test_streaming_scores_do_not_look_ahead(tmp_path: Path, one_torch_thread: None) -> None:
    """Truncating every series after row k leaves the scores of rows < k unchanged (same model, same pipeline)."""
    data = small_nab(tmp_path / "nab", rows=700)
    corpus = ns.load_corpus(data)
    series = nab.load_series(corpus, data)
    cfg = nab.NabConfig(epochs=2, chunk=97)
    model = nab.pretrain(series, cfg)
    pipe = nab.AnomalyPipeline(1, cfg.pipeline)
    full = nab.stream_corpus(series, model, pipe, cfg.chunk)
    k = 450
    cut = [nab.Series(s.name, s.stamps[:k], s.ts[:k], s.values[:k] * 1.0) for s in series]
    part = nab.stream_corpus(cut, model, pipe, 64)  # another chunking too
    for s in series:
        for key in ("score", "forecast", "raw"):
            np.testing.assert_allclose(part[s.name][key], full[s.name][key][:k], rtol=1e-5, atol=1e-6)
