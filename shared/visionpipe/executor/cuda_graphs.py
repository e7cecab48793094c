"""CUDA graphs (and, optionally, ``torch.compile``) around a stage's device function.

Eager ResNet-50 at batch 1 spends most of its 6 ms on an H100 launching
kernels for about 1 ms of math; replaying a captured graph launches them all
at once, and it frees the launcher thread for the next batch. Graphs are
captured for a set of batch-size buckets at warm-up — never in mid-traffic,
where capture's device synchronisation would stall the streams of batches in
flight — and each batch is padded up to its bucket. Only CUDA tensors, and
only functions whose output is a tensor or a dict of batched tensors (the
stages' contract, see ``host_io``); on the CPU, before capture and above the
largest bucket the eager function runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from visionpipe.settings import ExecutorSettings

log = logging.getLogger(__name__)

# Runs before capture, on a side stream: cuDNN picks its algorithms and the allocator settles here.
CAPTURE_WARMUP_RUNS = 3
# One capture at a time in the process. With graphs on, `visionpipe run` warms the detector and the classifier up
# at once, each on its own launcher thread; two captures at once share the allocator's capture bookkeeping.
CAPTURE_LOCK = threading.Lock()
# Each capture in thread-local mode: in the default (global) mode a cudaMalloc or a synchronising call on *any*
# thread while one captures invalidates that capture, and the other stage's warm-up makes plenty of both.
CAPTURE_ERROR_MODE = "thread_local"


def buckets(max_batch: int, sizes: Sequence[int] = ()) -> tuple[int, ...]:
    """Batch sizes to capture: ``sizes`` if given, else powers of two up to ``max_batch``; always ``max_batch``.

    Powers of two pad a batch by less than 2x (on average ~25% of the bucket), and there are only
    log2(max batch) graphs to hold in memory.
    """
    powers = {1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch}
    chosen = {s for s in sizes if 0 < s <= max_batch} or powers
    return tuple(sorted(chosen | {max_batch}))


def _take(out: Any, n: int) -> Any:
    """The first ``n`` rows of a replay's static output, copied before the next replay overwrites it."""
    if isinstance(out, torch.Tensor):
        return out[:n].clone()
    return {k: v[:n].clone() for k, v in out.items()}


class CudaGraphFn:
    """``fn`` replayed from CUDA graphs, one per bucket, each batch padded up to the next captured size.

    The padding rows hold whatever the last batch of that bucket left there; their outputs are dropped.
    Replays of different buckets share one memory pool: they run one after another on the compute stream
    and each keeps its own static output, so no replay can overwrite another's result.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], sizes: Sequence[int]) -> None:
        self.fn = fn
        self.sizes = tuple(sorted(sizes))
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}

    @property
    def captured(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def __call__(self, x: torch.Tensor) -> Any:
        n = x.shape[0]
        size = next((s for s in self.captured if s >= n), None)
        if size is None or not x.is_cuda:
            return self.fn(x)
        graph, static_in, static_out = self._graphs[size]
        static_in[:n].copy_(x)
        graph.replay()
        return _take(static_out, n)

    def capture(self, like: torch.Tensor) -> None:
        """Capture every bucket for items shaped like ``like``'s; the largest first, so smaller ones reuse its pool."""
        with CAPTURE_LOCK:
            pool = torch.cuda.graph_pool_handle()
            for size in sorted(self.sizes, reverse=True):
                self._graphs[size] = self._capture(size, like, pool)
        log.info("captured CUDA graphs for batch sizes %s", self.captured)

    def _capture(self, size: int, like: torch.Tensor, pool: Any) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]:
        static_in = torch.zeros((size, *like.shape[1:]), dtype=like.dtype, device=like.device)
        side = torch.cuda.Stream(device=like.device)
        side.wait_stream(torch.cuda.current_stream(like.device))
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP_RUNS):
                self.fn(static_in)
        torch.cuda.current_stream(like.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode=CAPTURE_ERROR_MODE):
            static_out = self.fn(static_in)
        if not isinstance(static_out, torch.Tensor) and not (
            isinstance(static_out, dict) and all(isinstance(v, torch.Tensor) for v in static_out.values())
        ):
            raise TypeError("CUDA graphs need fn to return a tensor or a dict of batched tensors")
        return graph, static_in, static_out


def prepare_fn(
    fn: Callable[[torch.Tensor], Any], settings: ExecutorSettings, device: str, max_batch: int
) -> Callable[[torch.Tensor], Any]:
    """``fn`` as the settings ask: compiled (``executor.compile``), graphed (``executor.cuda_graphs``, CUDA only).

    Both are optional: compile costs tens of seconds at start-up per bucket shape, and a function that
    synchronises with the host cannot be captured. ``TorchDevice.warmup`` captures the graphs.
    """
    if settings.compile != "off":
        # torch 2.11's kwargs only (the lent GPU machine's torch): mode and dynamic, nothing newer.
        fn = torch.compile(fn, mode=settings.compile, dynamic=False)
    if settings.cuda_graphs and device.startswith("cuda"):
        return CudaGraphFn(fn, buckets(max_batch, settings.graph_batches))
    return fn
