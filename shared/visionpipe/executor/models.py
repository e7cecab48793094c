"""Helpers that turn a torchvision module into the ``fn`` a ``TorchDevice`` runs.

Preprocessing belongs inside ``fn`` so that it runs on the compute stream:
uint8 images travel (a quarter of float32's bytes over PCIe) and are turned
into normalised fp16/bf16 channels-last tensors on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# ImageNet statistics: what torchvision's classification weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The requested dtype on a GPU; float32 on the CPU, where half precision is slower, not faster."""
    return DTYPES[name] if device.type == "cuda" else torch.float32


def classifier_fn(
    module: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(uint8 (b, 3, h, w)) -> float32 logits (b, classes)`` with normalisation on the device."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = module.eval().to(device=device, dtype=dtype).to(memory_format=memory_format)
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1) * 255.0)

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype).sub_(mean).mul_(inv_std).contiguous(memory_format=memory_format)
        return module(x).float()

    return fn


def torchvision_classifier(
    name: str,
    device: torch.device,
    dtype_name: str = "float16",
    channels_last: bool = True,
    cuda_graphs: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torchvision classifier with random weights (benchmarks never download weights) wrapped by ``classifier_fn``."""
    import torchvision

    module = torchvision.models.get_model(name, weights=None)
    # channels_last helps tensor cores; on the CPU it sent mobilenet_v3_small's depthwise convs down a path ~9x
    # slower at b16 (measured here: 1.9 s vs 0.21 s), so the CPU keeps the default layout.
    fn = classifier_fn(module, device, compute_dtype(dtype_name, device), channels_last and device.type == "cuda")
    return CudaGraphFn(fn) if cuda_graphs and device.type == "cuda" else fn


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
