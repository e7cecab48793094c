"""The device seam: something that runs a batch in phases and says how long each took.

``stage`` copies the items into the device's host-side batch buffer and
starts the upload (host work: a memcpy; it may wait for that buffer's
previous upload, never for compute), ``launch`` enqueues the computation
and the download (on a GPU it returns as soon as the kernels are queued) and
``collect`` blocks until the outputs are on the host. The executor calls
each from threads of its own — one stager and one launcher, both in
dispatch order, and collectors — so neither copies, kernel launches (≈5 ms
for an eager ResNet-50) nor waiting ever block the event loop, and a long
launch never delays the next batch's upload.
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
    # Sizes a batch is padded up to before it runs (none: each batch runs at its own size). Warm-up runs each.
    buckets: tuple[int, ...] = ()

    def stage(self, items: Sequence[Any]) -> Any:
        """Host staging of a batch (and, on a GPU, the queued upload); returns what ``launch`` takes."""
        return items

    @abstractmethod
    def launch(self, staged: Any) -> Any:
        """Start a staged batch; returns a handle for ``collect``. Must not wait for the device."""

    @abstractmethod
    def collect(self, handle: Any) -> tuple[list[Any], dict[str, float]]:
        """Wait for a launched batch: one host-side output per item, and seconds per phase."""

    @abstractmethod
    def example_item(self) -> Any:
        """An input item of the right shape and dtype, for warm-up."""

    def run(self, items: Sequence[Any]) -> tuple[list[Any], dict[str, float]]:
        return self.collect(self.launch(self.stage(items)))

    def warmup(self, sizes: Sequence[int], repeats: int) -> dict[str, list[tuple[int, float]]]:
        """Run every bucket and each of ``sizes`` once untimed, then time each of ``sizes`` ``repeats`` times.

        The untimed runs take the first-use costs (cuDNN plans and autotuning, allocator blocks, pinned buffers,
        lazy initialisation) of every shape a batch can run as, so none lands in the middle of traffic. Returns
        (batch size, seconds) per phase: the samples that seed the latency model.
        """
        samples: dict[str, list[tuple[int, float]]] = {p: [] for p in PHASES}
        item = self.example_item()
        sizes = [max(1, min(b, self.max_batch)) for b in sizes]
        for b in sorted(set(self.buckets) | set(sizes)):
            self.run([item] * b)
        for b in sizes:
            for _ in range(max(repeats, 1)):
                _, timings = self.run([item] * b)
                for p in PHASES:
                    samples[p].append((b, timings.get(p, 0.0)))
        return samples

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release buffers and streams."""
