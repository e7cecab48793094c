"""Every stage process says, through the broker, what state it is in and what a request arriving now should expect.

A :class:`StageState` is one heartbeat: the stage, its consumer name, its state (``starting`` while it loads
and warms up, ``ready`` while it consumes, ``stopping`` once it drains), a sequence number, and what it expects
(hop, queue wait and batch time, from the latency model its executor fits). Each process publishes one every
``HEARTBEAT_S`` to the state stream (``topology.state_stream``), which its writers keep short by age.

A :class:`StageBoard` reads the newest entries back (``Broker.tail``) and keeps the latest of each consumer:

* the gateway's readiness means "a request sent now will be served": every stage has a consumer that is
  ``ready`` and still beating;
* a stage's budget for a request subtracts what the stages after it expect (``visionpipe.budget``), and the
  front door refuses what the whole pipeline expects to miss.

A consumer is live while its sequence number keeps moving, judged on the reader's own monotonic clock, so two
hosts whose wall clocks differ still agree on who is alive; a record's wall time only decides, at first sight,
whether it is news or a leftover. Entries come from the broker, so they are decoded as untrusted: wrong types
are skipped, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import msgpack

from visionpipe import topology
from visionpipe.broker import Broker, BrokerError, wire
from visionpipe.budget import StageFigures
from visionpipe.settings import Settings
from visionpipe.topology import STAGES

log = logging.getLogger(__name__)

STARTING, READY, STOPPING = "starting", "ready", "stopping"
# How often a stage process announces itself: readiness and every budget follow it; a quarter second follows a
# 0.3 s burst, and a few small writes a second per process cost the broker nothing.
HEARTBEAT_S = 0.25
STATES = (STARTING, READY, STOPPING)
# A consumer is presumed gone after this many heartbeats without a new one (one late beat is not death).
STALE_BEATS = 4
# ...and never sooner than this: a stage busy on a loaded host (bombs to decode, a long batch) may beat late.
MIN_STALE_S = 3.0
# Entries read per refresh (on Kafka, per partition): seconds of heartbeats from a dozen replicas of a stage.
TAIL_COUNT = 256
# What writers keep of the stream: far more than a reader needs to find every live consumer.
KEEP_S = 30.0


@dataclass(frozen=True)
class StageState:
    stage: str
    consumer: str
    state: str
    seq: int
    at_ns: int  # the writer's wall clock
    interval_s: float
    expected_s: float | None = None  # hop + queue + batch for a message arriving now
    minimum_s: float | None = None  # hop + one item alone on an idle device
    batch_s: float | None = None  # its batch at the current rate (the static split's weight)
    hop_s: float | None = None  # the broker hop into the stage, at its fastest lately
    rate: float = 0.0  # requests/s arriving
    batch: float = 0.0  # requests per batch lately
    backlog: int = 0  # messages waiting in its group
    slo_feasible: bool = True

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> StageState | None:
        """The record, or None for anything that is not one (foreign writers, damage)."""
        try:
            doc = msgpack.unpackb(raw, raw=False)
        except Exception:  # msgpack raises several types for bad bytes; all mean "not ours"
            return None
        if not isinstance(doc, dict):
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in doc and f.default is not MISSING:
                continue  # an older writer without this field: the default
            v = doc.get(f.name)
            if not _fits(f.type, v):
                return None
            values[f.name] = v
        if values.get("stage") not in STAGES or values.get("state") not in STATES:
            return None
        return cls(**values)

    def figures(self) -> StageFigures | None:
        if self.expected_s is None or self.minimum_s is None:
            return None
        return StageFigures(self.expected_s, self.minimum_s, self.batch_s or 0.0, self.hop_s or 0.0)


def _fits(kind: Any, value: Any) -> bool:
    """Whether ``value`` has the type a field of StageState declares (as a string: postponed annotations)."""
    kind = str(kind)
    if value is None:
        return "None" in kind
    if "float" in kind:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind.startswith("bool"):
        return isinstance(value, bool)
    return isinstance(value, str) and len(value) <= 256


@dataclass
class _Seen:
    state: StageState
    moved_at: float  # reader's monotonic time the consumer's sequence last moved; -inf: a leftover


class StageBoard:
    """The latest state of every stage consumer, refreshed from the broker in the background (``run``)."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.stream = topology.state_stream(settings)
        self.interval_s = HEARTBEAT_S
        self.supported = True  # False once the backend said it cannot read a stream's end
        self.read_at: float | None = None  # monotonic time of the last successful read
        self._seen: dict[tuple[str, str], _Seen] = {}

    async def refresh(self) -> None:
        """Read the newest entries once; a backend without ``tail`` makes the board unsupported (and empty)."""
        try:
            entries = await self.broker.tail(self.stream, TAIL_COUNT)
        except NotImplementedError:
            if self.supported:
                log.warning("the %s broker cannot read the stage states: readiness and budgets go without", self.broker)
            self.supported = False
            return
        now, wall = time.monotonic(), time.time_ns()
        for d in entries:
            state = StageState.decode(wire(d.data))
            if state is not None:
                self._see(state, now, wall)
        self.read_at = now

    def _see(self, state: StageState, now: float, wall_ns: int) -> None:
        key = (state.stage, state.consumer)
        seen = self._seen.get(key)
        if seen is not None and state.seq <= seen.state.seq:
            return
        if seen is None and abs(wall_ns - state.at_ns) / 1e9 > _stale_s(state):
            self._seen[key] = _Seen(state, -math.inf)  # a leftover of a process long gone
            return
        self._seen[key] = _Seen(state, now)

    async def run(self) -> None:
        """Refresh every heartbeat until cancelled; a broker error is retried at the next one."""
        while True:
            try:
                await self.refresh()
            except BrokerError as exc:
                log.debug("stage states: %s", exc)
            except Exception:  # a loop that cannot die silently
                log.exception("reading the stage states failed")
            if not self.supported:
                return
            await asyncio.sleep(self.interval_s)

    def live(self, now: float | None = None) -> list[StageState]:
        """The latest state of every consumer still beating."""
        now = time.monotonic() if now is None else now
        return [s.state for s in self._seen.values() if now - s.moved_at <= _stale_s(s.state)]

    def ready(self, now: float | None = None) -> dict[str, bool]:
        """Per stage: whether a consumer of it is ready and beating."""
        up = {s.stage for s in self.live(now) if s.state == READY}
        return {stage: stage in up for stage in STAGES}

    def states(self, now: float | None = None) -> dict[str, str]:
        """Per stage, the most advanced state among its live consumers, or "missing"."""
        rank = {STOPPING: 0, STARTING: 1, READY: 2}
        best: dict[str, str] = {}
        for s in self.live(now):
            if s.stage not in best or rank[s.state] > rank[best[s.stage]]:
                best[s.stage] = s.state
        return {stage: best.get(stage, "missing") for stage in STAGES}

    def figures(self, now: float | None = None) -> dict[str, StageFigures]:
        """Per stage, what a request arriving now should expect there: its best ready consumer's figures.

        A message goes to whichever consumer of the group reads first, so the least loaded one.
        """
        out: dict[str, StageFigures] = {}
        for s in self.live(now):
            fig = s.figures() if s.state == READY else None
            if fig is not None and (s.stage not in out or fig.expected_s < out[s.stage].expected_s):
                out[s.stage] = fig
        return out


def _stale_s(state: StageState) -> float:
    return max(STALE_BEATS * state.interval_s, MIN_STALE_S)
