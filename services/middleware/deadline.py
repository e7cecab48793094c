"""Requests past their deadline are dead-lettered instead of computed for no one.

A client that gives a request a deadline (the HTTP gateway does, from its
wait bound) has stopped waiting once it passes; computing it anyway only
delays the requests behind it. Envelopes without a deadline never expire.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from visionpipe.services.middleware.base import Item, Middleware

if TYPE_CHECKING:
    from visionpipe.services.worker import Worker


class Deadline(Middleware):
    def admit(self, worker: Worker, item: Item) -> None:
        env = item.envelope
        if env is None or env.deadline_ns is None:
            return
        late_ms = (time.time_ns() - env.deadline_ns) / 1e6
        if late_ms > 0:
            item.kill(f"deadline passed {late_ms:.0f} ms before {worker.name} took it")
