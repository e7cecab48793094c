"""Dead letters are settled with the ack of their input, with the reason and the original bytes.

In the same step, not after: acking first and crashing before the dead letter
is published would lose the message without a trace. The dead letter shares
the input's once-key with its output, so one input never ends with both a
result and a dead letter. ``visionpipe dlq`` reads and replays what lands here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from visionpipe.broker import DeadLetter, Output
from visionpipe.services.runtime.middleware.base import Item, Middleware, StageContext, Verdict

log = logging.getLogger("visionpipe.services.runtime.worker")


class DeadLetters(Middleware):
    async def before_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        for it in items:
            if it.verdict is not Verdict.DEAD:
                continue
            rid = it.request_id
            log.info("stage %s: dead-lettering %s: %s", ctx.stage, rid, it.reason)
            record = DeadLetter(
                reason=it.reason or "",
                data=it.delivery.data,
                stage=ctx.stage,
                origin=ctx.input,
                request_id=rid,
                kind=it.kind,
            )
            it.outputs.append(Output(ctx.dead_letter, record.encode(), rid))
