"""The hand-over between a stream's reader thread and its publisher on the event loop, bounded either way.

Two policies, one structure. ``lossless`` (files): when the buffer is full the reader blocks, so a pipeline
that pushes back pauses reading and nothing is lost. ``latest`` (live sources): the reader never blocks; a
new frame pushes out the oldest waiting one, and the pushed-out frame is merged into its successor by the
caller's ``merge`` (which counts it), so a drop can never go unrecorded. Either way at most ``capacity``
frames are held, however slow the consumer.

The reader is a thread (PyAV blocks in FFmpeg with the GIL released) and the publisher a coroutine: the
thread wakes the loop with ``call_soon_threadsafe``, so no executor thread sits waiting per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# How often a blocked lossless reader looks at its stop flag: short against a human's patience on DELETE.
STOP_POLL_S = 0.1


class FrameBuffer(Generic[T]):
    def __init__(
        self, capacity: int, newest_wins: bool, merge: Callable[[T, T], T], loop: asyncio.AbstractEventLoop
    ) -> None:
        """``merge(dropped, newer)`` returns ``newer`` carrying the dropped frame's account."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity, self.newest_wins, self.merge, self.loop = capacity, newest_wins, merge, loop
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T, stop: threading.Event) -> int:
        """From the reader thread: add ``item``; returns frames dropped to make room (0 or 1).

        A lossless buffer blocks while full; it gives up (returns -1, item not added) only when ``stop`` is set.
        """
        dropped = 0
        with self._cond:
            while len(self._items) >= self.capacity:
                if self.newest_wins:
                    item = self.merge(self._items.popleft(), item)
                    dropped += 1
                    break
                if stop.is_set():
                    return -1
                self._cond.wait(STOP_POLL_S)
            self._items.append(item)
        self._wake()
        return dropped

    def close(self) -> None:
        """From the reader thread: nothing more will come; ``take`` returns what is left, then []."""
        with self._cond:
            self._closed = True
        self._wake()

    def drain(self) -> list[T]:
        """Everything still held, removed (a stream being removed accounts for it)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    async def take(self, most: int) -> list[T]:
        """On the loop: wait for at least one item and return up to ``most``, oldest first; [] once closed and empty."""
        while True:
            self._ready.clear()
            with self._cond:
                if self._items:
                    got = [self._items.popleft() for _ in range(min(most, len(self._items)))]
                    self._cond.notify_all()  # a lossless reader waits for room
                    return got
                if self._closed:
                    return []
            await self._ready.wait()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._ready.set)
