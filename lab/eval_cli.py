"""`streamer eval nab`: registered into streamer's CLI by register(subparsers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.errors import DataError

if TYPE_CHECKING:
    from lab.evaluation.nab import NabConfig
    from lab.evaluation.smap import SmapConfig


def _use_threads(n: int | None) -> None:
    """Torch CPU threads for an evaluation (tiny models run fastest on one; 0 or None keeps torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


def _existing(flag: str, value: str | None, folder: bool = False) -> None:
    """Fail at once, in one line naming the option and the path, when an input is missing (before any training)."""
    if value is None:
        return
    path = Path(value)
    if not path.exists():
        raise DataError(f"{flag} {path}: no such {'folder' if folder else 'file'}")
    if folder and not path.is_dir():
        raise DataError(f"{flag} {path}: a file, expected a folder")
    if not folder and path.is_dir():
        raise DataError(f"{flag} {path}: a folder, expected a file")


def cmd_eval_nab(args: argparse.Namespace) -> int:
    """Stream a NAB-layout folder through the engine and detectors, write NAB results, score, plot."""
    from lab.evaluation import nab
    from streamer.config import load_settings
    from streamer.detection import pipeline_config
    from streamer.model_source import load_checkpoint

    _existing("--data", args.data, folder=True)
    _existing("--checkpoint", args.checkpoint, folder=True)
    _use_threads(args.threads)
    served = load_checkpoint(args.checkpoint) if args.checkpoint else None
    # the pipeline the daemon would serve this checkpoint with (STREAMER_DETECTORS__*, its metadata, the default)
    pipeline = pipeline_config(load_settings().detectors, served.detectors if served else None)
    cfg = nab.NabConfig(pipeline=pipeline, **({} if args.epochs is None else {"epochs": args.epochs}))
    if args.cv is not None:
        return _eval_nab_cv(args, cfg)
    summary = nab.run(Path(args.data), Path(args.out), cfg, progress=not args.quiet, plots=not args.no_plots,
                      served=served)
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


def _eval_nab_cv(args: argparse.Namespace, cfg: NabConfig) -> int:
    """`eval nab --cv K`: the pipeline's search space chosen on K-1 folds of files, scored on the held one."""
    from lab.evaluation import nab_cv, selection
    from streamer.errors import ConfigError

    if args.checkpoint:
        raise ConfigError("--cv pre-trains its own forecaster: it takes no --checkpoint")
    _existing("--space", args.space)
    space = selection.load_space(Path(args.space)) if args.space else nab_cv.SEARCH_SPACE
    summary = nab_cv.run(Path(args.data), Path(args.out), cfg, k=args.cv, seed=args.cv_seed, space=space,
                         progress=not args.quiet)
    print("\n".join(nab_cv.report(summary)))
    print(f"summary: {args.out}/nab_cv.json")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_eval_occupancy(args: argparse.Namespace) -> int:
    """Train (or load) the occupancy event model, stream the test file through the engine and events, score."""
    from lab.evaluation import occupancy as occ

    _existing("--test", args.test)
    _existing("--train", args.train)
    _existing("--checkpoint", args.checkpoint, folder=True)
    _existing("--config", args.config)
    _use_threads(args.threads)
    settings = occ.EventSettings(on=args.on, off=args.off, min_on=args.min_on, min_off=args.min_off,
                                 chunk=args.chunk, tolerance=args.tolerance)
    s = occ.run(Path(args.test), None if args.out is None else Path(args.out),
                train=None if args.train is None else Path(args.train),
                checkpoint=None if args.checkpoint is None else Path(args.checkpoint),
                config=None if args.config is None else Path(args.config), settings=settings, epochs=args.epochs,
                seed=args.seed, progress=not args.quiet, plots=not args.no_plots)
    print(f"occupancy on {s['rows']} minutes ({s['seconds']:.1f} s): accuracy {s['accuracy']:.4f} "
          f"({s['errors']} wrong minutes), onset recall {s['onset_recall']:.3f}, offset recall "
          f"{s['offset_recall']:.3f} (+-{args.tolerance} min; on boundaries between runs of >= {occ.LONG_RUN} "
          f"min: {s['long_onset_recall']:.3f}, {s['long_offset_recall']:.3f}), mean delay {s['mean_delay_min']} min, "
          f"{s['false_events_per_day']:.2f} false events/day")
    b = s.get("baseline_lda")
    if b:
        print(f"memoryless LDA baseline (same training rows): accuracy {b['accuracy']:.4f} ({b['baseline_errors']} "
              f"wrong minutes); {b['shared_errors']} wrong minutes shared, {b['model_only_errors']} the model's "
              f"alone, {b['baseline_only_errors']} the baseline's alone")
    if args.out:
        print(f"summary: {args.out}/summary.json  plot: {args.out}/occupancy.png")
    if args.json:
        print(json.dumps({k: v for k, v in s.items() if k != "model"}))
    return 0


def cmd_eval_smap(args: argparse.Namespace) -> int:
    """Telemanom's SMAP evaluation: per-channel forecasters, streamed test errors, dynamic thresholds."""
    from lab.evaluation import smap

    _existing("--data", args.data, folder=True)
    _use_threads(args.threads)
    cfg = smap.SmapConfig(epochs=args.epochs) if args.epochs is not None else smap.SmapConfig()
    only = args.channels.split(",") if args.channels else None
    if args.cv is not None:
        return _eval_smap_cv(args, cfg, only)
    summary = smap.run(Path(args.data), Path(args.out) if args.out else None, cfg, only=only,
                       max_rows=args.max_rows, progress=not args.quiet, plots=not args.no_plots)
    print(f"SMAP on {summary['channels']} channels ({summary['labelled_sequences']} labelled sequences), "
          f"{summary['seconds']:.1f} s: precision {summary['precision']:.3f}, recall {summary['recall']:.3f} "
          f"(TP {summary['tp']}, FP {summary['fp']}, FN {summary['fn']}; event level, no point adjustment)")
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "per_channel")}))
    return 0


def _eval_smap_cv(args: argparse.Namespace, cfg: SmapConfig, only: list[str] | None) -> int:
    """`eval smap --cv K`: the threshold settings of the search space chosen on K-1 folds of channels."""
    from lab.evaluation import selection, smap_cv

    _existing("--space", args.space)
    space = selection.load_space(Path(args.space)) if args.space else smap_cv.SEARCH_SPACE
    summary = smap_cv.run(Path(args.data), Path(args.out) if args.out else None, cfg, k=args.cv,
                          seed=args.cv_seed, space=space, only=only, max_rows=args.max_rows,
                          progress=not args.quiet)
    print("\n".join(smap_cv.report(summary)))
    if args.out:
        print(f"summary: {args.out}/smap_cv.json")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_eval_ett(args: argparse.Namespace) -> int:
    """ETTh1 with the standard protocol: test MSE and MAE beside repeat-last-value."""
    from lab.evaluation import ett

    _existing("--data", args.data)
    _existing("--checkpoint", args.checkpoint, folder=True)
    _use_threads(args.threads)
    m = ett.run(Path(args.data), args.horizon, Path(args.out) if args.out else None,
                Path(args.checkpoint) if args.checkpoint else None, args.epochs, progress=not args.quiet)
    print(f"{Path(args.data).stem} test, horizon {m['horizon']}: MSE {m['mse']:.3f} MAE {m['mae']:.3f}  "
          f"(repeat-last MSE {m['repeat_mse']:.3f} MAE {m['repeat_mae']:.3f}; {m['test_windows']} windows, "
          f"{m['seconds']:.1f} s)")
    if args.json:
        print(json.dumps(m))
    return 0


def _add_nab(sub: argparse._SubParsersAction) -> None:
    """The `eval nab` sub-command and its options."""
    n = sub.add_parser("nab", help="Numenta Anomaly Benchmark: NAB result files, scores and plots",
                       description="DIR in NAB's layout (data/<category>/*.csv, labels/combined_windows.json). "
                                   "Pre-trains one forecaster on the probationary rows of those files only, streams "
                                   "every series through the engine and the anomaly pipeline, writes "
                                   "OUT/streamer/<category>/streamer_<name>.csv, scores them with NAB's rules "
                                   "(three profiles, swept threshold; also the pipeline's own alerts) and writes "
                                   "OUT/best.png, OUT/worst.png and OUT/summary.json (with the pipeline used, "
                                   "under 'detectors'). The pipeline is the daemon's: STREAMER_DETECTORS__* "
                                   "settings, else the checkpoint's, else the product default.")
    n.add_argument("--data", required=True, help="NAB folder (with data/ and labels/)")
    n.add_argument("--out", required=True, help="output folder")
    n.add_argument("--epochs", type=int, default=None, help="pre-training steps (default: the built-in config)")
    n.add_argument("--checkpoint", default=None,
                   help="stream this checkpoint (from `streamer train`) as `streamer serve` would, instead of "
                        "pre-training: its normalisation, and the pipeline of STREAMER_DETECTORS__*, else its "
                        "metadata, else the default")
    _run_options(n, threads=1, plots="the PNG plots")
    _cv_arguments(n, "by file, stratified by category (K default 5): each fold's pipeline configuration (of the "
                     "search space) and threshold are chosen on the other folds, then scored on it; reports "
                     "cv_standard beside in_sample_standard, writes OUT/nab_cv.json", "PipelineConfig", "nab_cv")
    n.set_defaults(func=cmd_eval_nab)


def _run_options(parser: argparse.ArgumentParser, threads: int, plots: str | None) -> None:
    """--json, --threads, --no-plots (where the evaluation plots) and --quiet, which every evaluation takes."""
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"torch CPU threads (default {threads}; 0: torch's default)")
    if plots is not None:
        parser.add_argument("--no-plots", action="store_true", help=f"skip {plots}")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _cv_arguments(parser: argparse.ArgumentParser, what: str, config: str, module: str) -> None:
    """--cv, --cv-seed and --space of an evaluation with honest selection."""
    parser.add_argument("--cv", type=int, nargs="?", const=5, default=None, metavar="K",
                        help=f"K-fold cross-validation {what}")
    parser.add_argument("--cv-seed", type=int, default=0, help="seed of the --cv fold split (default 0)")
    parser.add_argument("--space", default=None,
                        help=f"--cv search space, JSON: a list of axes, each a list of {config} field overrides "
                             f"(default: lab.evaluation.{module}.SEARCH_SPACE)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the eval command with its sub-commands: nab, occupancy, smap and ett."""
    p = subparsers.add_parser("eval", help="evaluate the detectors on public benchmarks",
                              description="Run benchmark data through the engine and detectors exactly as the "
                                          "daemon would (in process, each series streamed once, in order).")
    sub = p.add_subparsers(dest="benchmark", required=True)
    _add_nab(sub)
    _add_occupancy(sub)
    _add_smap(sub)
    _add_ett(sub)


def _add_occupancy(sub: argparse._SubParsersAction) -> None:
    o = sub.add_parser("occupancy", help="UCI Occupancy: per-minute accuracy and event onsets/offsets",
                       description="Trains the event model on --train only (its last 15% pick the epoch and the "
                                   "threshold) or loads --checkpoint, streams --test once, in order, in chunks "
                                   "through the engine and the hysteresis event detector as the daemon does, and "
                                   "reports accuracy, onset/offset recall within +-tolerance minutes, mean delay "
                                   "and false events per day; with --out: summary.json, rows.csv, events.json, "
                                   "occupancy.png and the training run under OUT/train/.")
    o.add_argument("--train", default=None, help="training file (datatraining.txt layout)")
    o.add_argument("--test", required=True, help="test file, streamed causally")
    o.add_argument("--checkpoint", default=None, help="serve this checkpoint instead of training")
    o.add_argument("--config", default=None, help="training TOML (e.g. examples/occupancy.toml; data paths replaced)")
    o.add_argument("--out", default=None, help="output folder")
    o.add_argument("--epochs", type=int, default=None, help="override the training epochs")
    o.add_argument("--seed", type=int, default=None, help="override the training seed")
    o.add_argument("--on", type=float, default=None, help="hysteresis on level (default: calibrated threshold)")
    o.add_argument("--off", type=float, default=None, help="hysteresis off level (default: the on level)")
    o.add_argument("--min-on", type=int, default=None,
                   help="readings at or above on to start an event (default: the checkpoint's, else 1)")
    o.add_argument("--min-off", type=int, default=None,
                   help="readings below off to end an event (default: the checkpoint's, else 1)")
    o.add_argument("--chunk", type=int, default=60, help="readings per engine step")
    o.add_argument("--tolerance", type=int, default=2, help="minutes either side for onset/offset matching")
    _run_options(o, threads=2, plots="the PNG plot")
    o.set_defaults(func=cmd_eval_occupancy)


def _add_smap(sub: argparse._SubParsersAction) -> None:
    sm = sub.add_parser("smap", help="NASA SMAP telemetry (Telemanom): event-level precision and recall",
                        description="DIR is the packed SMAP folder (its verify_and_extract.py is run into a "
                                    "temporary folder) or an unpacked one with train/ and test/ (and "
                                    "labeled_anomalies.csv in it or its parent). Per channel, a small forecaster "
                                    "is fitted on the train array; the test array is streamed through the engine, "
                                    "its errors through Telemanom's dynamic threshold; scored at event level.")
    sm.add_argument("--data", required=True, help="SMAP folder")
    sm.add_argument("--out", default=None, help="output folder (per-channel sequences, best.png, worst.png)")
    sm.add_argument("--epochs", type=int, default=None, help="training steps per channel (default: built-in)")
    sm.add_argument("--channels", default=None, help="comma-separated channel ids (default: all SMAP channels)")
    sm.add_argument("--max-rows", type=int, default=None, help="use only the first rows of each array (tests)")
    _run_options(sm, threads=1, plots="the PNG plots")
    _cv_arguments(sm, "by channel, stratified by subsystem (K default 5): each fold's threshold settings (of the "
                      "search space) are chosen by event F1 on the other folds, then scored on it; reports "
                      "cv_precision and cv_recall beside the in-sample figures, writes OUT/smap_cv.json",
                  "SmapConfig", "smap_cv")
    sm.set_defaults(func=cmd_eval_smap)


def _add_ett(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("ett", help="ETTh1 forecasting, standard protocol: test MSE/MAE beside repeat-last",
                       description="Trains with examples/ett.toml on FILE (or loads --checkpoint) and scores the "
                                   "test windows of the standard protocol (train [0, 8640), val [8640, 11520), "
                                   "test [11520, 14400), z-scored with train statistics).")
    e.add_argument("--data", required=True, help="ETTh1.csv")
    e.add_argument("--horizon", type=int, default=96, help="forecast horizon (default 96)")
    e.add_argument("--checkpoint", default=None, help="a checkpoint folder to evaluate instead of training")
    e.add_argument("--out", default=None, help="output folder (training report, checkpoint, best/worst plots)")
    e.add_argument("--epochs", type=int, default=None, help="override the config's training epochs")
    _run_options(e, threads=2, plots=None)
    e.set_defaults(func=cmd_eval_ett)
