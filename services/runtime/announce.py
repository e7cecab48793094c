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
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from visionpipe import topology
from visionpipe.broker import Broker, BrokerError
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.budgets import Budgets, HopFloor
from visionpipe.services.runtime.stage import Stage
from visionpipe.settings import Settings
from visionpipe.stage_state import HEARTBEAT_S, KEEP_S, READY, STARTING, STOPPING, StageBoard, StageState

if TYPE_CHECKING:  # the executor package imports torch, which a command that only starts stages need not load yet
    from visionpipe.executor.expectation import Expectation

log = logging.getLogger(__name__)

# Writers trim the state stream by age every this many beats.
TRIM_EVERY = 40


# (backlog) -> (expectation, arrival rate, slo feasible)
Snapshot = Callable[[int], "tuple[Expectation | None, float, bool]"]


def stage_snapshot(stage: Stage, budgets: Budgets, metrics: Metrics) -> Snapshot:
    """What a stage's heartbeat says: its expectation behind its backlog, its arrival rate, whether it is feasible.

    Taking it also keeps the stage's fastest answer in its budgets and its feasibility in its metrics.
    """

    def snapshot(backlog: int) -> tuple[Expectation | None, float, bool]:
        expectation = stage.expectation(backlog)
        if expectation is not None:
            budgets.fastest_s = expectation.minimum_s
        feasible = stage.slo_feasible
        metrics.slo_feasible.labels(stage.name).set(1 if feasible else 0)
        return expectation, stage.arrival_rate, feasible

    return snapshot


class Presence:
    """What a stage process needs to take part in deadlines: the others' states, its budgets, its own heartbeat."""

    def __init__(self, stage: Stage, broker: Broker, settings: Settings, metrics: Metrics, consumer: str) -> None:
        self.board = StageBoard(broker, settings)
        self.budgets = Budgets(stage.name, settings, self.board)
        stage.budgets = self.budgets
        snapshot = stage_snapshot(stage, self.budgets, metrics)
        self.announcer = Announcer(broker, settings, stage.name, consumer, snapshot, self.budgets.hop)
        self._reading: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Beat as ``starting`` and read the others' states, from before the model loads."""
        self.announcer.start()
        self._reading = asyncio.get_running_loop().create_task(self.board.run(), name=f"board-{self.announcer.stage}")

    def ready(self) -> None:
        self.announcer.state = READY

    async def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        await self.announcer.stop()


class Announcer:
    def __init__(
        self, broker: Broker, settings: Settings, stage: str, consumer: str, snapshot: Snapshot, hop: HopFloor
    ) -> None:
        self.broker, self.stage, self.consumer = broker, stage, consumer
        self.stream = topology.state_stream(settings)
        self.interval_s = HEARTBEAT_S
        self.snapshot, self.hop = snapshot, hop
        self.state = STARTING
        self.backlog = 0
        self._seq = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._ensured = False

    def record(self) -> StageState:
        expectation, rate, feasible = self.snapshot(self.backlog) if self.state == READY else (None, 0.0, True)
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
                if not self._ensured:  # a Kafka cluster may not make topics on a first write
                    await self.broker.ensure(self.stream)
                    self._ensured = True
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
