"""How much a worker holds in flight: consumed batches for a batch stage, requests (images, crops) for a DNN stage.

A DNN stage's executor forms device batches across every message in flight,
so what bounds its batches is the number of *requests* the worker has taken
from the broker and not yet settled — not the number of consume calls. With
a limit counted in consumed batches (2 × 8 messages) a detector with
``max_batch`` 32 never saw more than 16 images at once, and its GPU idled
while the worker went round to the broker. The worker waits for room before
each consume; a consume is counted provisionally as one per message, then
corrected to its real weight (say, the crops it carries) once admitted.
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

    def take(self, n: int) -> None:
        self._move(n)

    def give(self, n: int) -> None:
        self._move(-n)

    def _move(self, n: int) -> None:
        self.held += n
        if self.held < self.limit:
            self._room.set()
        else:
            self._room.clear()
