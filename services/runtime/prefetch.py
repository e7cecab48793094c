"""How much a worker holds in flight, counted in requests: images for decode and the detector, crops for the classifier.

A DNN stage's executor forms device batches across every message in flight,
so what bounds its batches is the number of *requests* the worker has taken
from the broker and not yet settled, not the number of consume calls: with a
limit counted in consumed batches (2 × 8 messages) a detector with
``max_batch`` 32 never saw more than 16 images at once, and its device idled
while the worker went round to the broker. Decode counts the same way, one
request per frame.

The worker waits for room before each consume. Each consumed batch gets a
:class:`Hold`, its own line in the ledger: one request per message at first
(nothing is known of them yet), corrected to their real weight once they are
admitted (the crops they carry; nothing for a duplicate), released in part as
groups of them settle, and closed (the rest released) when the batch is done,
however it ends.
"""

from __future__ import annotations

import asyncio


class Prefetch:
    """A soft limit: ``room()`` waits while ``held ≥ limit``; one consume may overshoot it by its own weight."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0
        self._room = asyncio.Event()
        self._room.set()

    async def room(self) -> None:
        await self._room.wait()

    def resize(self, limit: int) -> None:
        """A new limit (a stage whose instances changed); whoever waits for room sees it at once."""
        self.limit = max(1, limit)
        self._move(0)

    def hold(self, n: int) -> Hold:
        """A consumed batch of ``n`` messages, held as one request each until admitted."""
        return Hold(self, n)

    def _move(self, n: int) -> None:
        self.held += n
        if self.held < self.limit:
            self._room.set()
        else:
            self._room.clear()


class Hold:
    """What one consumed batch holds of the prefetch."""

    def __init__(self, prefetch: Prefetch, n: int) -> None:
        self._prefetch = prefetch
        self.count = 0
        self.correct(n)

    def correct(self, n: int) -> None:
        """Hold ``n`` from now on (the batch's admitted weight)."""
        self._prefetch._move(n - self.count)
        self.count = n

    def release(self, n: int) -> None:
        """Give back ``n`` (a group that settled), never more than is held."""
        self.correct(self.count - min(n, self.count))

    def close(self) -> None:
        self.correct(0)
