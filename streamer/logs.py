"""Structured logging: plain text for people, JSON lines for log pipelines."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import TracebackType


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message and any `extra` fields."""

    _standard = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._standard and k != "message"})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook: an uncaught exception becomes one log record (one JSON line with JSON logs)."""
    logging.getLogger("streamer").critical("uncaught exception: %r", exc, exc_info=(exc_type, exc, tb))


def log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook: as log_uncaught, naming the thread."""
    logging.getLogger("streamer").critical(
        "uncaught exception in thread %s: %r", args.thread.name if args.thread else "?", args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger, to stderr; with json, uncaught exceptions and warnings go through it too, so
    every line on stderr is one JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        sys.excepthook = log_uncaught
        threading.excepthook = log_uncaught_in_thread
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        sys.excepthook, threading.excepthook = sys.__excepthook__, threading.__excepthook__
        logging.captureWarnings(False)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
