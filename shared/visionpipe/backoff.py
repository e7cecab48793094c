"""Doubling backoff with a cap: how every loop that talks to a broker or a camera waits after a failure.

Short at first, so a blip costs little; doubling, so a server that stays away
is not hammered; capped, so recovery is noticed within seconds of it
happening. One helper, so every retry loop waits the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

# The first wait after a failure: long enough not to spin on a dead connection, short enough to hide a blip.
FIRST_S = 0.2
# The longest wait: a broker that comes back is used again within this long.
MAX_S = 5.0


@dataclass
class Backoff:
    first_s: float = FIRST_S
    max_s: float = MAX_S
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._next_s = self.first_s

    def next(self) -> float:
        """The wait before the next try; each call doubles the one after, up to ``max_s``."""
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``first_s`` again."""
        self._next_s = self.first_s

    async def wait(self) -> float:
        """Sleep the next wait; returns how long it was."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
