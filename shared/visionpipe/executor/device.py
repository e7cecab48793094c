"""The device seam: something that runs a batch in three phases and says how long each took.

``launch`` enqueues a batch (on a GPU it returns as soon as the copies and
kernels are queued) and ``collect`` blocks until the outputs are on the host.
The executor calls ``launch`` from one thread, in dispatch order, and
``collect`` from another, so neither kernel launches (≈5 ms for an eager
ResNet-50) nor waiting ever blocks the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from visionpipe.executor.latency import PHASES


class Device(ABC):
    """Runs batches of up to ``max_batch`` items; ``overlap``: upload, compute, download on separate streams."""

    max_batch: int
    overlap: bool
    name: str = "device"

    @abstractmethod
    def launch(self, items: Sequence[Any]) -> Any:
        """Start a batch; returns a handle for ``collect``. Must not wait for the device."""

    @abstractmethod
    def collect(self, handle: Any) -> tuple[list[Any], dict[str, float]]:
        """Wait for a launched batch: one host-side output per item, and seconds per phase."""

    @abstractmethod
    def example_item(self) -> Any:
        """An input item of the right shape and dtype, for warm-up."""

    def run(self, items: Sequence[Any]) -> tuple[list[Any], dict[str, float]]:
        return self.collect(self.launch(items))

    def warmup(self, sizes: Sequence[int], repeats: int) -> dict[str, list[tuple[int, float]]]:
        """Time each batch size ``repeats`` times after one untimed run (autotune, allocation, lazy init).

        Returns (batch size, seconds) per phase: the samples that seed the latency model.
        """
        samples: dict[str, list[tuple[int, float]]] = {p: [] for p in PHASES}
        item = self.example_item()
        for b in sizes:
            b = max(1, min(b, self.max_batch))
            self.run([item] * b)
            for _ in range(max(repeats, 1)):
                _, timings = self.run([item] * b)
                for p in PHASES:
                    samples[p].append((b, timings.get(p, 0.0)))
        return samples

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release buffers and streams."""
