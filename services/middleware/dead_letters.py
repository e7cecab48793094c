"""Dead letters are published before the ack of their input, with the reason and the original bytes.

Before, not after: acking first and crashing before the dead letter is
published would lose the message without a trace. ``visionpipe dlq`` reads
and replays what lands here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from visionpipe.services.middleware.base import Item, Middleware, Verdict

if TYPE_CHECKING:
    from visionpipe.services.worker import Worker

log = logging.getLogger("visionpipe.services.worker")


class DeadLetters(Middleware):
    async def before_ack(self, worker: Worker, items: Sequence[Item]) -> None:
        for it in items:
            if it.verdict is not Verdict.DEAD:
                continue
            rid = it.request_id
            log.info("stage %s: dead-lettering %s: %s", worker.name, rid, it.reason)
            await worker.broker.dead_letter(
                worker.dlq,
                reason=it.reason or "",
                data=it.delivery.data,
                stage=worker.name,
                origin=worker.input,
                request_id=rid,
            )
