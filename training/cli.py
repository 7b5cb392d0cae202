"""`streamer train` and `streamer inspect`: registered into streamer's CLI by register(subparsers)."""

from __future__ import annotations

import argparse
import json


def cmd_train(args: argparse.Namespace) -> int:
    """Train from a TOML config; print the headline metrics."""
    from training.pipeline import run

    metrics = run(args.config, args.out, device=args.device, epochs=args.epochs, progress=not args.quiet)
    keys = [k for k in ("test_mse", "test_mae", "repeat_mse", "repeat_mae", "seasonal_mse", "test_accuracy",
                        "lda_accuracy", "onset_recall", "offset_recall", "val_accuracy", "val_accuracy_first_fit",
                        "lda_val_accuracy", "total_seconds") if k in metrics]
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))
    print(f"checkpoint: {args.out}/checkpoint  report: {args.out}/report")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a checkpoint's metadata as JSON (weights are validated with --verify)."""
    from streamer import checkpoints

    if args.verify:
        _, meta = checkpoints.load(args.checkpoint)
    else:
        meta = checkpoints.read_meta(args.checkpoint)
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the train and inspect sub-commands."""
    p = subparsers.add_parser("train", help="train a model offline and write a checkpoint and a report",
                              description="Train from a TOML config (see examples/*.toml): stateful truncated "
                                          "BPTT, early stopping on validation; writes OUT/checkpoint/ "
                                          "(safetensors + meta.json) and OUT/report/ (metrics.json, PNG plots).")
    p.add_argument("config", help="TOML config file")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="device (default: the config's, cpu)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's number of epochs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("inspect", help="print a checkpoint's metadata (JSON)",
                              description="Print meta.json of a checkpoint directory after checking its format; "
                                          "never executes code from the checkpoint.")
    p.add_argument("checkpoint", help="checkpoint directory (e.g. OUT/checkpoint)")
    p.add_argument("--verify", action="store_true", help="also load and check the weights against the config")
    p.set_defaults(func=cmd_inspect)
