"""Requests past their deadline are dead-lettered instead of computed for no one.

A client that gives a request a deadline (the HTTP gateway does, from its
wait bound) has stopped waiting once it passes; computing it anyway only
delays the requests behind it. Envelopes without a deadline never expire.
"""

from __future__ import annotations

import time

from visionpipe.services.runtime.middleware.base import Item, Middleware, StageContext


class Deadline(Middleware):
    def admit(self, ctx: StageContext, item: Item) -> None:
        env = item.envelope
        if env is None or env.deadline_ns is None:
            return
        late_ms = (time.time_ns() - env.deadline_ns) / 1e6
        if late_ms > 0:
            item.kill(f"deadline passed {late_ms:.0f} ms before {ctx.stage} took it")
