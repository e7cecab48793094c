"""A stage process's heartbeat: its state and what it expects, published through the broker every heartbeat.

The worker starts one before loading its model (``starting``), says ``ready`` once the model is warm and the
consume loop runs, and ``stopping`` when it drains; the record carries what a request arriving now should
expect at this stage (the stage's :meth:`~visionpipe.services.runtime.stage.Stage.expectation`, with the broker
backlog it polls and the fastest broker hop into it lately). Readers are in ``visionpipe.stage_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from visionpipe import topology
from visionpipe.broker import Broker, BrokerError
from visionpipe.executor.expectation import Expectation
from visionpipe.settings import Settings
from visionpipe.stage_state import KEEP_S, READY, STARTING, STOPPING, StageState

log = logging.getLogger(__name__)

# Hops remembered for the floor: the fastest of the last 64 is the broker's own time, without queueing.
HOP_WINDOW = 64
# Writers trim the state stream by age every this many beats.
TRIM_EVERY = 40


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


Snapshot = Callable[[], tuple[Expectation | None, float, bool]]  # (expectation, arrival rate, slo feasible)


class Announcer:
    def __init__(
        self, broker: Broker, settings: Settings, stage: str, consumer: str, snapshot: Snapshot, hop: HopFloor
    ) -> None:
        self.broker, self.stage, self.consumer = broker, stage, consumer
        self.stream = topology.state_stream(settings)
        self.interval_s = settings.service.heartbeat_s
        self.snapshot, self.hop = snapshot, hop
        self.state = STARTING
        self.backlog = 0
        self._seq = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    def record(self) -> StageState:
        expectation, rate, feasible = self.snapshot() if self.state == READY else (None, 0.0, True)
        base = StageState(
            self.stage,
            self.consumer,
            self.state,
            next(self._seq),
            time.time_ns(),
            self.interval_s,
            hop_s=self.hop.seconds,
            rate=rate,
            backlog=self.backlog,
            slo_feasible=feasible,
        )
        if expectation is None:
            return base
        hop = self.hop.seconds
        return replace(
            base,
            expected_s=hop + expectation.total_s,
            minimum_s=hop + expectation.minimum_s,
            batch_s=expectation.batch_s,
            batch=float(expectation.batch),
        )

    async def beat(self) -> None:
        await self.broker.publish(self.stream, [self.record().encode()], [self.stage])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"announce-{self.stage}")

    async def _run(self) -> None:
        for n in itertools.count():
            try:
                await self.beat()
                if n % TRIM_EVERY == 0:
                    await self.broker.trim_older(self.stream, KEEP_S)
            except BrokerError as exc:  # the consume loop reports a broker that stays away
                log.debug("stage %s: heartbeat not published: %s", self.stage, exc)
            except Exception:  # a loop that cannot die silently
                log.exception("stage %s: heartbeat failed", self.stage)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        """Say ``stopping`` once (readers stop counting on this consumer at once) and end the beat."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = STOPPING
        with contextlib.suppress(BrokerError):
            await self.beat()
