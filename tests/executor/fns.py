"""Device functions for the executor tests: real torchvision models, outside any stage.

The executor is tested on its own, so these are plain logits functions rather
than the classifier stage's top-k one (``visionpipe.services.classifier.model``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision


def logits_fn(
    name: str, device: str, dtype: torch.dtype = torch.float32, channels_last: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(uint8 (b, 3, h, w)) -> float32 logits``, random weights, scaled to [0, 1] on the device."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = torchvision.models.get_model(name, weights=None).eval().to(device=device, dtype=dtype)
    module = module.to(memory_format=memory_format)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return module(x.to(dtype).div_(255.0).contiguous(memory_format=memory_format)).float()

    return fn
