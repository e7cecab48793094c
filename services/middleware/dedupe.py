"""Idempotency against redelivery: a request done here is acked again without redoing it.

Two sets of request ids: those being worked on now, and the last
``DONE_MEMORY`` finished. A redelivered copy of a finished request is a
duplicate (acked, no work). A copy of a request still in progress here —
reclaimed because the work took long — is left alone: acking it would ack
the entry before its output exists, and if that publish then failed the
request would be lost. The working copy acks it once done.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from visionpipe.services.middleware.base import Item, Middleware, Verdict

if TYPE_CHECKING:
    from visionpipe.services.worker import Worker

# Request ids remembered: a few minutes of traffic at thousands of messages per second.
DONE_MEMORY = 100_000


class Dedupe(Middleware):
    def __init__(self, memory: int = DONE_MEMORY) -> None:
        self.memory = memory
        self.done: OrderedDict[str, None] = OrderedDict()
        self.working: set[str] = set()

    def admit(self, worker: Worker, item: Item) -> None:
        rid = item.request_id
        if rid is None:
            return
        if rid in self.working:  # also a second copy in the same consumed batch
            item.verdict = Verdict.SKIP
        elif rid in self.done:
            item.verdict = Verdict.DUPLICATE
        else:
            self.working.add(rid)

    def after_ack(self, worker: Worker, items: Sequence[Item]) -> None:
        for it in items:
            if it.verdict is Verdict.DONE and it.envelope is not None:
                self.done[it.envelope.request_id] = None
        while len(self.done) > self.memory:
            self.done.popitem(last=False)

    def on_release(self, worker: Worker, items: Sequence[Item]) -> None:
        # Also reached when a publish failed (broker down): those items stay pending and come back by reclaim,
        # so they must not look in progress then, or admit would skip them for ever.
        self.working.difference_update(it.envelope.request_id for it in items if it.envelope is not None)
