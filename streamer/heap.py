"""When the daemon's cyclic garbage collector runs: between batches, never inside one.

A batch of 10-20k readings allocates some 100k short-lived containers (records, parsed dicts, rows). Reference
counting frees nearly all of them as soon as they are done with; the cyclic collector only matters for the few
that form cycles. Left automatic, it runs whenever allocations outnumber deallocations by its threshold, which
is in the middle of a batch, where it walks every container the batch still holds: the larger the batch, the
more often and the longer, so that a slow batch made the next one larger and slower still (young collections
took 0.2 s of a 30 s latency run at short cycles, 1.4 s at long ones, with pauses up to 47 ms). Objects alive
after start-up (modules, torch, the model) and after the first commit (what kafka-python and torch create
lazily on first use) are frozen: no collection walks them again.

So the loop drives the collector: automatic collection off, a young collection after every batch (when what
the batch allocated is mostly freed already, so it is short), the middle generation every `middle_every`
batches, everything every `full_every_s` seconds.
"""

from __future__ import annotations

import gc
import time


class BatchCollector:
    """Python's cyclic garbage collector run by the serving loop between batches."""

    def __init__(self, middle_every: int = 10, full_every_s: float = 60.0) -> None:
        self.middle_every = middle_every
        self.full_every_s = full_every_s
        self.batches = 0
        self.last_full = time.monotonic()
        self.settled = False

    def start(self) -> None:
        """Freeze what start-up created and turn automatic collection off."""
        gc.collect()
        gc.freeze()
        gc.disable()
        self.last_full = time.monotonic()

    def settle(self) -> None:
        """Freeze what the first batch and commit created lazily (protocol classes, torch's dispatch); once."""
        if not self.settled:
            self.settled = True
            gc.collect()
            gc.freeze()

    def after_batch(self) -> None:
        """Collect the garbage cycles of the batch just processed (and, now and then, of older ones)."""
        self.batches += 1
        now = time.monotonic()
        if now - self.last_full >= self.full_every_s:
            gc.collect(2)
            self.last_full = now
        else:
            gc.collect(1 if self.batches % self.middle_every == 0 else 0)

    def stop(self) -> None:
        """Hand collection back to the interpreter."""
        gc.enable()
