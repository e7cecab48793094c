"""The stages' side of the executor seam: build a ``BatchExecutor`` for a device function, submit with a deadline.

Both DNN stages submit one item per image or crop and let the executor form
batches across every message in flight; the executor decides when a batch
goes (policy, deadlines), the stage only decides what an item is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from visionpipe.settings import ExecutorSettings

# On a CPU a bigger batch buys almost nothing (no kernel-launch cost to spread, threads already busy) while
# warm-up times the largest batch several times: a 32-image detector batch is ~4 s per run on 2 cores.
CPU_MAX_BATCH = 4


class StageExecutor:
    """A ``BatchExecutor`` around ``fn`` on ``device``, built the same way for every DNN stage."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], list[Any]],
        item_shape: tuple[int, ...],
        settings: ExecutorSettings,
        device: str,
        on_batch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        from visionpipe.executor import BatchExecutor, TorchDevice, make_policy

        if device == "cpu" and settings.max_batch > CPU_MAX_BATCH:
            settings = settings.model_copy(update={"max_batch": CPU_MAX_BATCH})
        self.settings = settings
        self.device = TorchDevice(
            fn,
            item_shape=item_shape,
            item_dtype=torch.uint8,
            max_batch=settings.max_batch,
            device=device,
            overlap=settings.overlap,
        )
        self.executor = BatchExecutor(self.device, make_policy(settings), settings)
        if on_batch is not None:
            self.executor.on_batch = on_batch

    async def start(self) -> None:
        await self.executor.start()

    async def stop(self) -> None:
        await self.executor.stop()

    async def submit(self, item: np.ndarray) -> Any:
        if not item.flags.writeable:  # views of a received message are read-only; torch.from_numpy warns on those
            item = item.copy()
        # No explicit deadline: the executor gives each request arrival + executor.slo_ms on its own clock.
        return await self.executor.submit(item, deadline_ns=None)

    def observe_backlog(self, backlog: int) -> None:
        self.executor.observe_backlog(backlog)
