"""Noticing a group member that the group's work passes by, so the worker can make it join again.

A Kafka member can be left in the group on paper while it reads nothing: its consumer fenced, its session lost
and the rejoin never finished, or its assignment gone while the group's coordinator moved to another broker.
Nothing errors: consume just returns nothing, the partitions it is still counted as owning are read by nobody,
and their lag grows until the process is restarted. What the worker can see is this: its input has lag, the
lag does not go down, and it has consumed nothing and holds nothing, for ``after_s``. Then it asks the broker
to rejoin (``Broker.rejoin``: a new member, a rebalance), which costs one rebalance when the stall was only
apparent (a member with no partitions beside busy ones whose lag kept rising).
"""

from __future__ import annotations

import logging
import time

from visionpipe.broker import BrokerError
from visionpipe.services.runtime.middleware import StageContext

log = logging.getLogger("visionpipe.services.runtime.worker")

# Well past a group's session timeout and a rebalance (seconds on a busy box) and past a batch of the slowest
# stage, so that a healthy group is never taken for a stalled one; short against an operator noticing.
STALL_AFTER_S = 30.0


class Stall:
    def __init__(self, after_s: float = STALL_AFTER_S) -> None:
        self.after_s = after_s
        self.due = False  # stalled: the worker rejoins before its next consume
        self._since: float | None = None  # when the current stretch of "lag, not going down, idle" began
        self._lag = 0

    def worked(self) -> None:
        """Deliveries came in: whatever looked stalled is not."""
        self._since = None

    def observe(self, lag: int, idle: bool, now: float | None = None) -> bool:
        """One backlog reading (``lag``: undelivered messages of the group; ``idle``: this worker holds nothing);
        True (and ``due``) once the stall has lasted ``after_s``; the clock then starts again."""
        now = time.monotonic() if now is None else now
        if lag <= 0 or not idle or lag < self._lag:
            self._since = None
        elif self._since is None:
            self._since = now
        self._lag = lag
        if self._since is not None and now - self._since >= self.after_s:
            self._since, self.due = None, True
        return self.due

    async def rejoin(self, ctx: StageContext) -> None:
        """Leave the group and join it again as a new member; a broker error leaves it for the next stall."""
        self.due = False
        ctx.metrics.errors.labels(ctx.stage, "stalled").inc()
        log.warning(
            "stage %s: %s has had lag that did not go down for %.0fs while this member got nothing; joining %s again",
            ctx.stage,
            ctx.input,
            self.after_s,
            ctx.group,
        )
        try:
            await ctx.broker.rejoin(ctx.input, ctx.group, ctx.consumer)
        except BrokerError as exc:
            log.warning("stage %s: rejoining failed (%s)", ctx.stage, exc)
