"""What the detector and classifier stages share: a model behind a ``StageExecutor``, one request per item.

A subclass says which model it loads, how its device function is built and
what one item looks like; loading, readiness, backlog hints, metrics and the
one-awaitable-per-envelope fan-out live here once.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch

from visionpipe.envelope import Envelope
from visionpipe.metrics import Metrics
from visionpipe.services.executors import StageExecutor
from visionpipe.services.models import Kind, LoadedModel, load_model, resolve_device
from visionpipe.services.worker import Outcome, Stage
from visionpipe.settings import Settings

log = logging.getLogger(__name__)


class DnnStage(Stage):
    kind: Kind

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self.executor: StageExecutor | None = None

    @property
    @abstractmethod
    def model_spec(self) -> tuple[str, str]:
        """(torchvision model name, weights) from the stage's settings section."""

    @property
    @abstractmethod
    def item_shape(self) -> tuple[int, ...]: ...

    @abstractmethod
    def build_fn(self, model: LoadedModel, device: str) -> Callable[[torch.Tensor], list[Any]]: ...

    @abstractmethod
    async def _one(self, env: Envelope) -> Outcome: ...

    async def start(self) -> None:
        device = resolve_device(self.settings.service.device)
        name, weights = self.model_spec
        model = await asyncio.to_thread(load_model, self.kind, name, weights)
        self.model = model
        fn = self.build_fn(model, device)
        self.executor = StageExecutor(fn, self.item_shape, self.settings.executor, device, self._on_batch)
        await self.executor.start()
        log.info("%s %s (%s weights) on %s", self.name, name, model.weights, device)

    def _on_batch(self, size: int, timings: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.device_batch.labels(self.name).observe(size)

    @property
    def ready(self) -> bool:
        return self.executor is not None

    @property
    def weights(self) -> str | None:
        return self.model.weights if self.model is not None else None

    def observe_backlog(self, backlog: int) -> None:
        if self.executor is not None:
            self.executor.observe_backlog(backlog)

    async def stop(self) -> None:
        if self.executor is not None:
            await self.executor.stop()

    async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        return list(await asyncio.gather(*self.items(envelopes)))

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        return [self._one(env) for env in envelopes]
