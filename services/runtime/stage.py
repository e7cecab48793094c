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
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from visionpipe.envelope import Envelope

if TYPE_CHECKING:  # the executor package imports torch: a stage without a model (decode) must not pay for it
    from visionpipe.executor.expectation import Expectation
    from visionpipe.services.runtime.budgets import Budgets

# A stage's timed batches are averaged over about the last ten.
BATCH_EWMA_WEIGHT = 0.1


class BadInput(ValueError):
    """This message can never be processed: dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Expired(Exception):
    """This request can no longer make its deadline: answer ``deadline_exceeded`` at once, compute nothing more.

    ``late_s``: how late it would have been at best; ``why``: one of ``visionpipe.hops.WHYS``.
    """

    def __init__(self, stage: str, late_s: float, why: str) -> None:
        super().__init__(f"{stage}: {late_s * 1e3:.0f} ms late ({why})")
        self.stage, self.late_s, self.why = stage, late_s, why


# output, poison, out of time, or a transient failure (left pending)
Outcome: TypeAlias = Envelope | BadInput | Expired | Exception


class Stage(ABC):
    name: str
    budgets: Budgets | None = None  # the worker's: this stage's part of each request's deadline

    @abstractmethod
    async def start(self) -> None:
        """Load models, start executors. Called once before the first batch."""

    @abstractmethod
    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        """One awaitable per envelope, in order; an exception it raises counts as a transient failure."""

    async def stop(self) -> None:
        return None

    def expectation(self, backlog: int) -> Expectation | None:
        """What a message arriving now behind ``backlog`` messages should expect here; None: no idea yet."""
        return None

    @property
    def slo_feasible(self) -> bool:
        """Whether the stage can meet its latency bound at the load it sees (its policy's judgement)."""
        return True

    @property
    def arrival_rate(self) -> float:
        """Requests a second arriving lately, where the stage measures it; 0: it does not."""
        return 0.0

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
    """A stage that turns a consumed batch into outcomes in one call, all ready together.

    Its expectation comes from the batches it has run: their mean time and size (EWMAs), and the fastest.
    """

    _batch_s: float | None = None
    _batch_size = 1.0
    _fastest_s = math.inf

    @abstractmethod
    async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]: ...

    def expectation(self, backlog: int) -> Expectation | None:
        from visionpipe.executor.expectation import Expectation

        if self._batch_s is None:
            return None
        rounds = math.ceil(backlog / max(self._batch_size, 1.0))
        return Expectation(rounds * self._batch_s, self._batch_s, self._fastest_s, round(self._batch_size))

    async def _timed(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        t0 = time.monotonic()
        try:
            return await self.process(envelopes)
        finally:
            took = time.monotonic() - t0
            self._fastest_s = min(self._fastest_s, took)
            old = took if self._batch_s is None else self._batch_s
            self._batch_s = old + BATCH_EWMA_WEIGHT * (took - old)
            self._batch_size += BATCH_EWMA_WEIGHT * (len(envelopes) - self._batch_size)

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        batch = asyncio.ensure_future(self._timed(envelopes))

        async def pick(i: int) -> Outcome:
            return (await asyncio.shield(batch))[i]

        return [pick(i) for i in range(len(envelopes))]
