"""Every stage as a task of one process, on one broker: ``visionpipe run``, ``run --serve`` and ``ingest``.

The same workers ``visionpipe serve`` runs, one per stage, so what works in one process works as services.
Used as ``async with LocalStages(broker, settings) as stages:`` — leaving the block stops every stage and
waits for its in-flight work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType

from visionpipe.broker import Broker
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.factory import make_worker
from visionpipe.services.runtime.stage import Stage
from visionpipe.services.runtime.worker import Worker
from visionpipe.settings import Settings
from visionpipe.topology import STAGES

# How often start-up is checked: a stage's model load takes seconds, a failed one should surface at once.
STARTED_POLL_S = 0.05


class LocalStages:
    def __init__(self, broker: Broker, settings: Settings, names: Sequence[str] = STAGES) -> None:
        self.workers: list[Worker] = [make_worker(n, broker, settings, Metrics()) for n in names]
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> LocalStages:
        self.tasks = [asyncio.create_task(w.run(), name=f"stage-{w.name}") for w in self.workers]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for w in self.workers:
            w.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def stage(self, name: str) -> Stage:
        return next(w.stage for w in self.workers if w.name == name)

    def metrics(self, name: str) -> Metrics:
        return next(w.metrics for w in self.workers if w.name == name)

    @property
    def started(self) -> bool:
        return all(w.started for w in self.workers)

    def check(self, others: Iterable[asyncio.Task[None]] = ()) -> None:
        """Raise the error of any stage (or of ``others``) that has ended: a start-up failure, a crash."""
        for task in (*self.tasks, *others):
            if task.done():
                task.result()  # its own error (a missing model file, a port in use), raised as it is
                raise RuntimeError(f"{task.get_name()} exited")

    async def wait_started(self, others: Iterable[asyncio.Task[None]] = ()) -> None:
        """Until every stage has started (models loaded, consuming); raises a stage's start-up error."""
        others = list(others)
        while not self.started:
            self.check(others)
            await asyncio.sleep(STARTED_POLL_S)
