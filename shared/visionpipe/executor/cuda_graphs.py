"""CUDA graphs for the small batches where an eager model is launch-bound.

Eager ResNet-50 at batch 1 spends most of its 6 ms on an H100 launching
kernels for about 1 ms of math; replaying a captured graph launches them all
at once. Only for CUDA tensors: on the CPU (and above the largest captured
size) the eager function runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Batch sizes captured as CUDA graphs: eager ResNet-50 at b1 is launch-bound (6.2 ms on an H100 for ~1 ms of
# math); above b8 the kernels are long enough that launch overhead no longer matters.
GRAPH_SIZES = (1, 2, 4, 8)


class CudaGraphFn:
    """``fn`` replayed from CUDA graphs for small batches, padded up to the next captured size; eager above.

    Graphs are captured lazily on first use of a size, on the caller's (compute) stream. The output of a
    replay lives in the graph's static buffer, so it is cloned before the next replay can overwrite it.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], sizes: tuple[int, ...] = GRAPH_SIZES) -> None:
        self.fn = fn
        self.sizes = tuple(sorted(sizes))
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = next((s for s in self.sizes if s >= n), None)
        if size is None or not x.is_cuda:
            return self.fn(x)
        graph, static_in, static_out = self._graphs.get(size) or self._capture(size, x)
        static_in[:n].copy_(x)
        graph.replay()
        return static_out[:n].clone()

    def _capture(self, size: int, like: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = torch.zeros((size, *like.shape[1:]), dtype=like.dtype, device=like.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: cuDNN picks its algorithms here
                self.fn(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        self._graphs[size] = (graph, static_in, static_out)
        return self._graphs[size]
