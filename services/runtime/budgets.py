"""A stage's side of the deadline split: its part of each request's deadline, and whether it can still be met.

The stage deadline (wall clock) is the request's deadline less what the stages after it announce they expect
(``limits.deadline_split`` = ``propagate``), or a fixed share of the whole (``static``): ``visionpipe.budget``
does the arithmetic, the :class:`~visionpipe.stage_state.StageBoard` brings the figures. A request is out of
time at this stage when its deadline has passed, or when what is left of its stage deadline is shorter than
the stage's fastest answer: it is answered ``deadline_exceeded`` at once instead of being computed for nobody.
"""

from __future__ import annotations

from collections import deque

from visionpipe import budget
from visionpipe.budget import StageFigures
from visionpipe.envelope import Envelope, Event
from visionpipe.hops import WHY_BUDGET, WHY_PASSED
from visionpipe.services.runtime.stage import Expired
from visionpipe.settings import Settings
from visionpipe.stage_state import StageBoard
from visionpipe.topology import INGRESS

NS = 1_000_000_000
# Hops remembered for the floor: the fastest of the last 64 is the broker's own time, without queueing.
HOP_WINDOW = 64


class HopFloor:
    """The fastest broker hop into the stage among the last ``HOP_WINDOW`` messages, in seconds."""

    def __init__(self, window: int = HOP_WINDOW) -> None:
        self._hops: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        if seconds >= 0:
            self._hops.append(seconds)

    @property
    def seconds(self) -> float:
        return min(self._hops) if self._hops else 0.0


class Budgets:
    def __init__(self, stage: str, settings: Settings, board: StageBoard | None = None) -> None:
        self.stage = stage
        self.split = settings.limits.deadline_split
        self.board = board
        self.hop = HopFloor()
        self.fastest_s = 0.0  # the stage's quickest answer lately, without the hop (kept by the worker)

    def figures(self) -> dict[str, StageFigures]:
        return self.board.figures() if self.board is not None else {}

    def stage_deadline_ns(self, env: Envelope) -> int | None:
        """When this stage must be done with ``env`` (wall clock); None when the request has no deadline."""
        if env.deadline_ns is None:
            return None
        start = env.ts(INGRESS, Event.ENQUEUED) or env.deadline_ns
        return budget.stage_deadline_ns(env.deadline_ns, start, self.stage, self.figures(), self.split)

    def check(self, env: Envelope, now_ns: int, fastest_s: float = 0.0) -> Expired | None:
        """Out of time here? ``fastest_s``: the stage's quickest answer (one item alone, nothing queued)."""
        if env.deadline_ns is None:
            return None
        if now_ns > env.deadline_ns:
            return Expired(self.stage, (now_ns - env.deadline_ns) / NS, WHY_PASSED)
        due = self.stage_deadline_ns(env)
        assert due is not None
        late = now_ns + int(fastest_s * NS) - due
        if late > 0:
            return Expired(self.stage, late / NS, WHY_BUDGET)
        return None

    def observe_hop(self, env: Envelope, now_ns: int, previous: str) -> None:
        """The broker hop this message took into the stage: from its previous publish (or ingress) to now."""
        before = env.ts(INGRESS, Event.ENQUEUED) if previous == INGRESS else env.ts(previous, Event.PUBLISHED)
        if before is not None:
            self.hop.observe((now_ns - before) / NS)
