"""Dead letters are settled with the ack of their input, with the reason and the original bytes.

In the same step, not after: acking first and crashing before the dead letter
is published would lose the message without a trace. The dead letter shares
the input's once-key with its output, so one input never ends with both a
result and a dead letter. ``visionpipe dlq`` reads and replays what lands here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from visionpipe.broker import DeadLetter, Output
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
            record = DeadLetter(
                reason=it.reason or "", data=it.delivery.data, stage=worker.name, origin=worker.input, request_id=rid
            )
            it.outputs.append(Output(worker.dlq, record.encode(), rid))
