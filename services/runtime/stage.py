"""What a pipeline step is to the worker that runs it: envelopes in, one outcome per envelope out.

A stage knows nothing of brokers, acks or retries; the :class:`~visionpipe.services.runtime.worker.Worker`
around it owns the delivery contract. Its one duty is :meth:`Stage.items`: an
awaitable per envelope, each resolving when *that* envelope is done, so the
DNN stages (whose executor splits a consumed batch across device batches)
publish each output as soon as it is ready rather than when the slowest item
of its consumed batch is. Stages that finish a whole batch at once (decode)
derive from :class:`BatchStage` and write ``process`` instead.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import TypeAlias

from visionpipe.envelope import Envelope


class BadInput(ValueError):
    """This message can never be processed: dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Outcome: TypeAlias = Envelope | BadInput | Exception  # output, poison, or a transient failure (left pending)


class Stage(ABC):
    name: str

    @abstractmethod
    async def start(self) -> None:
        """Load models, start executors. Called once before the first batch."""

    @abstractmethod
    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        """One awaitable per envelope, in order; an exception it raises counts as a transient failure."""

    async def stop(self) -> None:
        return None

    def observe_backlog(self, backlog: int) -> None:  # noqa: B027 - optional hook
        """The stage's input backlog, for the executor's arrival-rate estimate."""

    def requests_in(self, env: Envelope) -> int:
        """How much of the worker's prefetch this envelope takes (``prefetch_requests``): one by default."""
        return 1

    @property
    def prefetch_requests(self) -> int | None:
        """Requests to keep in flight (a DNN stage: device batches' worth); None: count consumed batches instead."""
        return None

    @property
    def ready(self) -> bool:
        return True

    @property
    def weights(self) -> str | None:
        """What the stage's model weights are ("random", a file, a weights name); None for stages without a model."""
        return None


class BatchStage(Stage):
    """A stage that turns a consumed batch into outcomes in one call, all ready together."""

    @abstractmethod
    async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]: ...

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        batch = asyncio.ensure_future(self.process(envelopes))

        async def pick(i: int) -> Outcome:
            return (await asyncio.shield(batch))[i]

        return [pick(i) for i in range(len(envelopes))]
