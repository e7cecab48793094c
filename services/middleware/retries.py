"""A bound on attempts: a message that failed (or timed out) too often is dead-lettered, not retried for ever.

Transient failures (a device error, a cancelled batch) leave the delivery
pending, to come back by reclaim; the broker counts deliveries, and past
``max_retries`` the next one goes to the dead-letter stream with the count
as its reason. Backends that keep no count (``Broker.tracks_attempts`` false)
always report one attempt, so nothing is ever dropped for want of a count.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from visionpipe.services.middleware.base import Item, Middleware, Verdict

if TYPE_CHECKING:
    from visionpipe.services.worker import Worker

log = logging.getLogger("visionpipe.services.worker")


class Retries(Middleware):
    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def admit(self, worker: Worker, item: Item) -> None:
        attempts = item.delivery.attempts
        if attempts > self.max_retries:
            item.kill(f"gave up after {attempts - 1} deliveries that failed or timed out")

    def on_outcome(self, worker: Worker, item: Item) -> None:
        if item.verdict is Verdict.FAILED:
            log.warning(
                "stage %s: request %s failed, left for redelivery: %r", worker.name, item.request_id, item.outcome
            )
