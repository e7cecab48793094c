"""Deliveries being worked on are kept ours: their idle time is refreshed, so reclaim takes only from the dead.

Reclaim hands a delivery idle past ``broker.reclaim_idle_s`` to another
consumer, presuming its holder dead. A batch that is merely slow (a CPU
detector on a loaded box, a device queue behind other work) would be taken
too: done twice, counted a failed attempt each time, and after enough of
them dead-lettered ("gave up after N deliveries") while the slow copy was
about to publish its result. So while an item is held here its delivery is
touched (Redis: ``XCLAIM … JUSTID`` to ourselves) a few times per idle
period. Only a process that stopped beating, a dead one, loses its work.

A delivery held past ``service.work_timeout_s`` is presumed hung (a stage
bug, not slowness) and no longer touched, so reclaim may give it to another
consumer as a failed attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from visionpipe.broker import BrokerError
from visionpipe.services.runtime.middleware.base import Item, Middleware, StageContext, Verdict

log = logging.getLogger("visionpipe.services.runtime.worker")

# Beats per reclaim_idle_s: one beat late (a stalled event loop, a slow broker reply) still leaves two in hand.
BEATS_PER_IDLE = 3


class Heartbeat(Middleware):
    def __init__(self, reclaim_idle_s: float, work_timeout_s: float) -> None:
        self.interval_s = max(reclaim_idle_s / BEATS_PER_IDLE, 0.01)
        self.work_timeout_s = work_timeout_s
        self.held: dict[int, tuple[Item, float]] = {}  # id(item) -> (item, monotonic time it was taken)
        self._task: asyncio.Task[None] | None = None

    def on_consume(self, ctx: StageContext, items: Sequence[Item]) -> None:
        now = time.monotonic()
        for it in items:
            self.held[id(it)] = (it, now)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._beat(ctx))

    def on_release(self, ctx: StageContext, items: Sequence[Item]) -> None:
        for it in items:
            self.held.pop(id(it), None)

    async def _beat(self, ctx: StageContext) -> None:
        """Touch what is held every ``interval_s``; ends once nothing is (the next consume starts it again)."""
        while self.held:
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            # Skipped copies are never released: another item's business (the working copy settles the entry).
            for key in [k for k, (it, _) in self.held.items() if it.verdict is Verdict.SKIP]:
                del self.held[key]
            live = [it.delivery for it, since in list(self.held.values()) if now - since < self.work_timeout_s]
            try:
                await ctx.broker.touch(ctx.input, ctx.group, ctx.consumer, live)
            except BrokerError as exc:  # the settle or the next consume reports a broker that stays away
                log.debug("stage %s: heartbeat failed: %s", ctx.stage, exc)
