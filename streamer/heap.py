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
the batch allocated is mostly freed already, so it is short) and once a second while idle (heartbeats and
metadata refreshes make garbage too), the middle generation every `middle_every` collections, everything
every `full_every_s` seconds.
"""

from __future__ import annotations

import gc
import time

IDLE_EVERY_S = 1.0  # young collections while no records come


class BatchCollector:
    """Python's cyclic garbage collector run by the serving loop between batches."""

    def __init__(self, middle_every: int = 10, full_every_s: float = 60.0) -> None:
        self.middle_every = middle_every
        self.full_every_s = full_every_s
        self.collections = 0
        self.last_full = self.last_young = time.monotonic()
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

    def after_poll(self, busy: bool) -> None:
        """Collect the garbage cycles of the batch just processed (`busy`), or of the last second when idle;
        now and then those of older generations too."""
        now = time.monotonic()
        if not busy and now - self.last_young < IDLE_EVERY_S:
            return
        self.last_young = now
        self.collections += 1
        if now - self.last_full >= self.full_every_s:
            gc.collect(2)
            self.last_full = now
        else:
            gc.collect(1 if self.collections % self.middle_every == 0 else 0)

    def stop(self) -> None:
        """Hand collection back to the interpreter."""
        gc.enable()
