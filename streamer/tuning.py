"""Process-wide settings the daemon changes while it serves, changed in one place and restored when it stops.

torch's intra-op threads: the daemon makes many small model calls beside Kafka's network threads, so it uses
`STREAMER_ENGINE__THREADS` (by default what the CPU quota allows) rather than torch's default of every core.
The interpreter's switch interval: a transaction is several broker round trips in a row, each handed from
kafka-python's network thread to the commit worker, and every hand-over waits for the loop to yield the
interpreter; a shorter interval (`STREAMER_ENGINE__SWITCH_INTERVAL_MS`) shortens each wait (measurements in
benchmarks/README.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def serving_process(threads: int, switch_interval_ms: float) -> Iterator[None]:
    """torch's threads and the switch interval set for serving; both restored on exit, however it exits."""
    old_threads, old_interval = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(threads)
    sys.setswitchinterval(switch_interval_ms / 1000)
    try:
        yield
    finally:
        sys.setswitchinterval(old_interval)
        torch.set_num_threads(old_threads)
