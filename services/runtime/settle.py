"""Settling: outcomes become verdicts, the middleware has its say, then one ``Broker.settle`` publishes and acks.

Outputs and dead letters are published and their inputs acked in one step
(atomic where the backend can), each input's at most once. A settle the
broker refuses (down, full, restarting) is retried here, in place, until it
goes through or shutdown cancels it: these items are done and only the broker
stands in the way. Left to reclaim instead, every retry would count as a
failed delivery, and a full broker would end good work in the dead-letter
stream; the heartbeat keeps the deliveries ours meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time

from visionpipe.backoff import Backoff
from visionpipe.broker import BrokerError, Output, Settled
from visionpipe.envelope import Envelope, Event
from visionpipe.services.runtime.middleware import Chain, Item, Verdict
from visionpipe.services.runtime.middleware.base import ACKED
from visionpipe.services.runtime.stage import BadInput, Expired

log = logging.getLogger("visionpipe.services.runtime.worker")


class Settler:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.ctx = chain.ctx

    async def settle(self, items: list[Item]) -> None:
        """Turn each worked item's outcome into its verdict, then settle every item whose verdict is acked.

        Items already decided at admission (duplicates, dead letters) pass straight through. Whatever
        happens, every item is released to the middleware at the end.
        """
        try:  # an output that cannot be encoded fails the group, which is then released all the same
            self._verdicts([it for it in items if it.verdict is Verdict.WORK])
            await self.chain.before_ack(items)
            settled = [Settled(it.delivery, tuple(it.outputs), it.once) for it in items if it.verdict in ACKED]
            if settled:
                duplicates = await self._until_done(settled)
                self.ctx.metrics.duplicates.labels(self.ctx.stage).inc(duplicates)
                if duplicates:  # the broker published some of these before, or (Kafka) dropped them because their
                    # partition moved and its next owner redoes them: it says not which, so none counts as done here
                    for it in items:
                        it.once = None
            self.chain.after_ack(items)
        finally:
            self.chain.on_release(items)

    def _verdicts(self, worked: list[Item]) -> None:
        now = time.time_ns()
        for it in worked:
            if isinstance(it.outcome, Envelope):
                it.verdict = Verdict.DONE
                it.outcome.stamp(self.ctx.stage, Event.PUBLISHED, now)
                payload = self.ctx.broker.payload(it.outcome)
                if isinstance(payload, bytes):  # what crosses the wire to the next stage
                    self.ctx.metrics.published_bytes.labels(self.ctx.stage).inc(len(payload))
                it.outputs.append(Output(self.ctx.output, payload, it.outcome.request_id))
            elif isinstance(it.outcome, BadInput):
                it.kill(it.outcome.reason)
            elif isinstance(it.outcome, Expired):
                it.expire(it.outcome)
            else:
                it.verdict = Verdict.FAILED
            self.chain.on_outcome(it)

    async def _until_done(self, settled: list[Settled]) -> int:
        """``Broker.settle``, retried on a broker error until it goes through; the duplicates it dropped."""
        ctx, backoff = self.ctx, Backoff()
        while True:
            try:
                return await ctx.broker.settle(ctx.input, ctx.group, settled)
            except BrokerError as exc:
                ctx.metrics.errors.labels(ctx.stage, "broker").inc()
                delay = backoff.next()
                log.warning("stage %s: settle of %d failed (%s); retry in %.1fs", ctx.stage, len(settled), exc, delay)
                await asyncio.sleep(delay)
