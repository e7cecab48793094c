"""Requests that can no longer make their deadline are answered ``deadline_exceeded`` at once, not computed.

At admission a request is out of time when its deadline has passed, or when what is left of this stage's part
of it (``Budgets``: the deadline less what the stages after it expect) is shorter than the stage's fastest
answer. A DNN stage's executor also takes a request out of its queue once it can no longer be done in time
(the stage answers with an :class:`~visionpipe.services.runtime.stage.Expired` outcome). Either way the answer
is an :class:`~visionpipe.hops.Expiry` on the results stream, settled with the ack (and the input's once-key,
so one input never ends with both a result and an expiry): a client waiting on the results stream hears at
once which stage knew and by how much the request would have missed. It is not a dead letter: nothing is
wrong with the request, and there is nothing to replay. Envelopes without a deadline never expire.

Every admitted request also tells the stage its broker hop (from the previous publish), whose floor the
stage announces as part of what it expects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from visionpipe import topology
from visionpipe.broker import Output
from visionpipe.envelope import Event
from visionpipe.hops import Expiry
from visionpipe.services.runtime.budgets import Budgets
from visionpipe.services.runtime.middleware.base import Item, Middleware, StageContext, Verdict

log = logging.getLogger("visionpipe.services.runtime.worker")


class Deadline(Middleware):
    def __init__(self) -> None:
        self._own: Budgets | None = None  # for a context without budgets (a policy tested alone)

    def _budgets(self, ctx: StageContext) -> Budgets:
        if ctx.budgets is not None:
            return ctx.budgets
        if self._own is None:
            self._own = Budgets(ctx.stage, ctx.settings)
        return self._own

    def admit(self, ctx: StageContext, item: Item) -> None:
        env = item.envelope
        if env is None:
            return
        budgets, now = self._budgets(ctx), time.time_ns()
        budgets.observe_hop(env, now, topology.previous(ctx.stage))
        expired = budgets.check(env, now, budgets.fastest_s)
        if expired is not None:
            item.expire(expired)
            return
        due = budgets.stage_deadline_ns(env)
        if due is not None:
            ctx.metrics.budget.labels(ctx.stage).observe(max(due - now, 0) / 1e9)

    async def before_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        for it in items:
            if it.verdict is not Verdict.EXPIRED or it.envelope is None or it.expired is None:
                continue
            e = it.expired
            log.info("stage %s: %s answered deadline_exceeded: %s", ctx.stage, it.request_id, e)
            answer = Expiry(e.stage, e.late_s * 1e3, e.why).write(it.envelope)
            answer.stamp(ctx.stage, Event.PUBLISHED)
            it.outputs.append(Output(ctx.results, answer.encode(), it.envelope.request_id))
