"""One consumed batch through a stage: admit each delivery, work on what is admitted, settle items as they finish.

Admission decodes the envelope (a broken one is dead-lettered with the reason)
and lets each policy look; what is still ``WORK`` goes to the stage, which
answers one awaitable per envelope, and items are settled in groups as they
complete, so a fast item is published without waiting for the slowest of its
batch. The batch's :class:`~visionpipe.services.runtime.prefetch.Hold` is
corrected to the admitted weight, released group by group, and closed however
the batch ends.
"""

from __future__ import annotations

import asyncio
import time

from visionpipe.broker import Delivery
from visionpipe.envelope import Envelope, EnvelopeError, Event, Limits
from visionpipe.services.runtime.middleware import Chain, Item, Verdict
from visionpipe.services.runtime.middleware.base import ACKED
from visionpipe.services.runtime.prefetch import Hold
from visionpipe.services.runtime.settle import Settler
from visionpipe.services.runtime.stage import Outcome, Stage


class Handler:
    def __init__(self, stage: Stage, chain: Chain, limits: Limits) -> None:
        self.stage, self.chain, self.limits = stage, chain, limits
        self.settler = Settler(chain)

    async def handle(self, deliveries: list[Delivery], hold: Hold) -> None:
        items = [Item(d) for d in deliveries]
        weight: dict[int, int] = {}
        try:
            self.chain.on_consume(items)
            now = time.time_ns()
            for it in items:
                self._admit(it, now)
            work = [it for it in items if it.verdict is Verdict.WORK]
            weight = {id(it): self.stage.requests_in(it.envelope) for it in work if it.envelope is not None}
            hold.correct(sum(weight.values()))
            decided = [it for it in items if it.verdict in ACKED]  # duplicates and dead letters: nothing to wait for
            if decided:
                await self.settler.settle(decided)
            if work:
                await self._work(work, hold, weight)
        finally:
            hold.close()

    def _admit(self, item: Item, now_ns: int) -> None:
        """Decode, then let each policy look; an item still ``WORK`` after all of them is processed."""
        try:
            item.envelope = Envelope.decode(item.delivery.data, self.limits)
        except EnvelopeError as exc:
            item.kill(f"bad envelope: {exc.reason}")
            return
        self.chain.admit(item)
        if item.verdict is Verdict.WORK:
            item.envelope.stamp(self.chain.ctx.stage, Event.DEQUEUED, now_ns)

    async def _work(self, work: list[Item], hold: Hold, weight: dict[int, int]) -> None:
        pending: dict[asyncio.Future[Outcome], Item] = {}
        for it, awaitable in zip(work, self.stage.items([it.envelope for it in work if it.envelope]), strict=True):
            pending[asyncio.ensure_future(awaitable)] = it
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                group = []
                for fut in done:
                    it = pending.pop(fut)
                    it.outcome = _outcome(fut)
                    group.append(it)
                await self.settler.settle(group)
                hold.release(sum(weight.pop(id(it), 0) for it in group))
        finally:
            for fut in pending:  # cancelled (SIGTERM grace over): nothing of these is acked
                fut.cancel()
            self.chain.on_release(list(pending.values()))


def _outcome(fut: asyncio.Future[Outcome]) -> Outcome:
    """The item's outcome; an exception raised by the stage counts as a transient failure of that item."""
    if fut.cancelled():
        return RuntimeError("cancelled")
    exc = fut.exception()
    return exc if isinstance(exc, Exception) else fut.result()
