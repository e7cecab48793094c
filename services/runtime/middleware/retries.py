"""A bound on attempts: a message that failed (or timed out) too often is dead-lettered, not retried for ever.

Transient failures (a device error, a cancelled batch) leave the delivery
pending, to come back by reclaim; the broker counts deliveries, and past
``max_retries`` the next one goes to the dead-letter stream with the count
as its reason. Backends that keep no count (``Broker.tracks_attempts`` false)
always report one attempt, so nothing is ever dropped for want of a count.
"""

from __future__ import annotations

import logging

from visionpipe.broker.base import GAVE_UP
from visionpipe.services.runtime.middleware.base import Item, Middleware, StageContext, Verdict

log = logging.getLogger("visionpipe.services.runtime.worker")


class Retries(Middleware):
    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def admit(self, ctx: StageContext, item: Item) -> None:
        attempts = item.delivery.attempts
        if attempts > self.max_retries:
            item.kill(f"gave up after {attempts - 1} deliveries that failed or timed out", GAVE_UP)

    def on_outcome(self, ctx: StageContext, item: Item) -> None:
        if item.verdict is Verdict.FAILED:
            log.warning(
                "stage %s: request %s failed, left for redelivery: %r", ctx.stage, item.request_id, item.outcome
            )
