"""The classifier's device function: uint8 crops in, top-k scores and labels out, normalised on the device.

Crops travel as uint8 (a quarter of float32's bytes over PCIe) and become
normalised float tensors on the compute stream, in channels-last layout on a
GPU where convolutions prefer it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from visionpipe.services.models.efficientnet_lite import fuse_batchnorm
from visionpipe.services.models.loading import LoadedModel
from visionpipe.settings import ClassifierSettings, ExecutorSettings

# ImageNet statistics: what torchvision's (and EfficientNet's) classification weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_input(device: str, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(b, 3, h, w)`` uint8 -> float32 normalised with the ImageNet statistics, on ``device``."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        x = (batch.float().div_(255.0) - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return prepare


def classifier_fn(
    model: LoadedModel, settings: ClassifierSettings, executor: ExecutorSettings, device: str
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``fn(batch)`` for the executor: (b, 3, C, C) uint8 crops -> ``scores`` and ``labels``, (b, top_k) each.

    The device-function contract (``visionpipe.executor.host_io``): batched tensors, no host synchronisation.
    """
    module = model.module
    if not model.scripted:
        fuse_batchnorm(module)  # an eval-mode affine map the conv absorbs: one memory pass less per layer
    module = module.to(device)
    cuda = device.startswith("cuda")
    # channels_last helps tensor cores; on the CPU it sent mobilenet_v3_small's depthwise convs down a path several
    # times slower, while EfficientNet-Lite0 ran faster with it: so on the CPU it is a property of the model.
    channels_last = not model.scripted and (executor.channels_last if cuda else model.channels_last_on_cpu)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    prepare = imagenet_input(device, channels_last)
    autocast_dtype = getattr(torch, executor.dtype)

    @torch.inference_mode()
    def fn(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = prepare(batch)
        # Autocast's weight cache lives for one call anyway; off, so the function can be captured as a CUDA graph.
        enabled = cuda and autocast_dtype != torch.float32
        with torch.autocast("cuda", dtype=autocast_dtype, enabled=enabled, cache_enabled=False):
            logits = module(x)
        probs = logits.float().softmax(dim=1)
        top = probs.topk(min(settings.top_k, probs.shape[1]), dim=1)
        return {"scores": top.values, "labels": top.indices.to(torch.int32)}

    return fn
