"""The `streamer` command line: serve, replay and settings, and the command groups installed beside the runtime.

Training (`streamer train`, `streamer inspect`), evaluation (`streamer eval`) and the demo (`streamer demo`) live
outside the runtime package and register themselves through the `streamer.commands` entry points; an install
without them (the image) serves without them, and says so when one is asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from streamer.config import derive_instance_id, load_settings, requested_log_format
from streamer.errors import StreamerError
from streamer.logs import setup_logging

log = logging.getLogger("streamer")


class _Signals:
    """SIGTERM and SIGINT: the running service finishes its batch and stops; before it exists (torch and the
    model load for seconds) the process ends at once."""

    def __init__(self) -> None:
        self.service = None
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        if self.service is None:
            raise SystemExit(0)
        self.service.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT; the HTTP endpoints open first, before torch is even imported."""
    from streamer.metrics import HealthServer, Metrics

    settings = derive_instance_id(load_settings())
    setup_logging(settings.log_level, settings.log_format)
    log.info("settings", extra={"settings": settings.masked()})
    signals = _Signals()
    metrics, m, http = Metrics(), settings.metrics, None
    if m.enabled:
        http = HealthServer(metrics, m.host, m.port, reason=lambda: "starting: loading the model").start()
        log.info("http endpoints on %s:%d", m.host, http.port, extra={"host": m.host, "port": http.port})
    try:
        from streamer.heap import BatchCollector
        from streamer.service import Service

        collector = BatchCollector()
        signals.service = Service(settings, collector=collector, metrics=metrics, http=http)
    except BaseException:
        if http is not None:
            http.stop()
        raise
    collector.start()
    try:
        signals.service.run()
    finally:
        collector.stop()
    _exit_now(0)


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown: unloading torch takes seconds, which would delay a
    stop. The service has closed its Kafka clients, files and port by now; the logs are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_replay(args: argparse.Namespace) -> int:
    """Produce CSV series into a topic as readings or chunks."""
    from tqdm import tqdm

    from streamer.kafka.clients import make_producer
    from streamer.kafka.replay import load_series, replay

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap or settings.kafka.bootstrap_servers})
    series = [load_series(Path(p), start_ms=args.start_ms, step_ms=args.step_ms)[:3] for p in args.files]
    total = sum(len(ts) for _, ts, _ in series)
    producer = make_producer(kafka, None)
    with tqdm(total=total, unit="reading", disable=args.quiet) as bar:
        sent = replay(producer, args.topic, series, rate=args.rate, chunk=args.chunk, progress=bar)
    producer.close()
    print(f"replayed {sent} readings of {len(series)} streams into {args.topic}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Print the effective settings, secrets masked (exit 2 naming the setting when one is wrong), or with
    --reference every setting with its type, default and meaning."""
    from streamer.config import effective_variables, settings_markdown
    from streamer.kafka.clients import check_client_options

    if args.reference:
        print(settings_markdown())
        return 0
    settings = derive_instance_id(load_settings())
    check_client_options(settings.kafka)
    if args.json:
        print(json.dumps(settings.masked(), indent=2))
    else:
        print("\n".join(f"{name}={value}" for name, value in effective_variables(settings)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per verb, each with its own --help."""
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Stateful LSTM/GRU models over Kafka sensor streams. Settings come from STREAMER_* "
                    "environment variables (nested with __), e.g. STREAMER_KAFKA__BOOTSTRAP_SERVERS.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the daemon (settings from STREAMER_* variables)",
                       description="Consume readings, step per-stream state, publish outputs; stop on SIGTERM.")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("replay", help="produce CSV or NumPy series into a topic",
                       description="Each file is one stream: a CSV (timestamp column, then channels) or a .npy "
                                   "array [n, channels] stamped --start-ms + i * --step-ms; readings are merged "
                                   "in time order and keyed by stream id (the file name).")
    p.add_argument("files", nargs="+", help="CSV or .npy files, one stream each")
    p.add_argument("--start-ms", type=int, default=1_420_070_400_000, help=".npy files: first timestamp (ms)")
    p.add_argument("--step-ms", type=int, default=60_000, help=".npy files: milliseconds between rows")
    p.add_argument("--topic", required=True, help="topic to produce into")
    p.add_argument("--rate", type=float, default=0.0, help="readings per second (0: as fast as possible)")
    p.add_argument("--chunk", type=int, default=1, help="readings per record (1: single readings)")
    p.add_argument("--bootstrap", help="bootstrap servers (default: STREAMER_KAFKA__BOOTSTRAP_SERVERS)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("settings", help="check and print the effective settings (a pre-flight check)",
                       description="Read the settings as `streamer serve` would and print them, one "
                                   "VARIABLE=value a line, secrets masked; a wrong or unknown setting exits 2 "
                                   "naming it. --reference prints every setting's type, default and meaning.")
    p.add_argument("--json", action="store_true", help="print the effective settings as one JSON object")
    p.add_argument("--reference", action="store_true", help="print the settings reference (Markdown)")
    p.set_defaults(func=cmd_settings)
    add_command_groups(sub)
    return parser


COMMAND_GROUPS = "streamer.commands"  # entry points: name = "module:register", register(subparsers) adds commands


def add_command_groups(sub: argparse._SubParsersAction) -> None:
    """The commands of every installed group; a group whose code is not installed answers that it is not."""
    for entry in sorted(metadata.entry_points(group=COMMAND_GROUPS), key=lambda e: e.name):
        try:
            register = entry.load()
        except ModuleNotFoundError as exc:
            p = sub.add_parser(entry.name, help=f"(not in this install: {exc.name})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda args, name=entry.name, missing=exc.name: _not_installed(name, missing))
            continue
        register(sub)


def _not_installed(name: str, missing: str | None) -> int:
    print(f"streamer: `streamer {name}` needs {missing}, which this install (the daemon's runtime) leaves out; "
          "install the project from its source tree (`pip install .` there) for training, evaluation and the demo",
          file=sys.stderr)
    return 2


def package_version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    try:
        return metadata.version("streamer")
    except metadata.PackageNotFoundError:
        from streamer import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `streamer` console script."""
    args = build_parser().parse_args(argv)
    json_logs = requested_log_format() == "json"
    if json_logs:  # errors before a command sets up its logging (a wrong setting, an uncaught exception): JSON too
        setup_logging("WARNING", "json")
    try:
        return args.func(args)
    except StreamerError as exc:
        if json_logs:
            log.error("streamer: %s", exc, extra={"error": type(exc).__name__})
        else:
            print(f"streamer: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
