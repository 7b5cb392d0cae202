"""`streamer eval nab`: registered into streamer's CLI by register(subparsers)."""

from __future__ import annotations

import argparse
import json


def cmd_eval_nab(args: argparse.Namespace) -> int:
    """Stream a NAB-layout folder through the engine and detectors, write NAB results, score, plot."""
    from pathlib import Path

    import torch

    from streamer.evaluation import nab

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = nab.NabConfig(epochs=args.epochs) if args.epochs is not None else nab.NabConfig()
    summary = nab.run(Path(args.data), Path(args.out), cfg, progress=not args.quiet, plots=not args.no_plots)
    keys = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
    print(f"NAB on {summary['files']} files ({summary['rows']} readings, {summary['windows']} windows), "
          f"{summary['seconds']:.1f} s")
    for k in keys:
        print(f"  {k:20s} {summary[k]:8.3f}  (swept threshold {summary['thresholds'][k]:.4f}; "
              f"own threshold {summary['own_threshold'][k]:.3f})")
    print(f"results: {args.out}/{nab.DETECTOR}/  summary: {args.out}/summary.json")
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the eval command with its nab sub-command."""
    p = subparsers.add_parser("eval", help="evaluate the detectors on public benchmarks",
                              description="Run benchmark data through the engine and detectors exactly as the "
                                          "daemon would (in process, each series streamed once, in order).")
    sub = p.add_subparsers(dest="benchmark", required=True)
    n = sub.add_parser("nab", help="Numenta Anomaly Benchmark: NAB result files, scores and plots",
                       description="DIR in NAB's layout (data/<category>/*.csv, labels/combined_windows.json). "
                                   "Pre-trains one forecaster on the probationary rows of those files only, streams "
                                   "every series through the engine and the anomaly pipeline, writes "
                                   "OUT/streamer/<category>/streamer_<name>.csv, scores them with NAB's rules "
                                   "(three profiles, swept threshold; also the pipeline's own alerts) and writes "
                                   "OUT/best.png, OUT/worst.png and OUT/summary.json.")
    n.add_argument("--data", required=True, help="NAB folder (with data/ and labels/)")
    n.add_argument("--out", required=True, help="output folder")
    n.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    n.add_argument("--epochs", type=int, default=None, help="pre-training steps (default: the built-in config)")
    n.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: a tiny model is fastest on one; 0: torch's default)")
    n.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=cmd_eval_nab)
