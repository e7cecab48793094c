"""The detector's device function: a torchvision detector on a letterboxed batch, then crops cut on the device.

Runs on the executor's compute stream. Cutting crops here with
``roi_align`` keeps the image on the device: only the boxes and the small
crops travel back to the host, never a full frame a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.ops import roi_align

from visionpipe.services.weights import LoadedModel
from visionpipe.settings import DetectorSettings, ExecutorSettings

# roi_align samples 2x2 points per output pixel: enough to avoid aliasing when a crop shrinks, cheap when it grows.
ROI_SAMPLING_RATIO = 2

DetectorOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # boxes, scores, labels, crops


def cap_detections(module: torch.nn.Module, score_threshold: float, max_detections: int) -> None:
    """Push the score threshold and the cap into the model's own postprocessing, where NMS is cheaper.

    Single-stage detectors (SSD, RetinaNet, FCOS) keep these on the model,
    two-stage ones (Faster/Mask/Keypoint R-CNN) on ``roi_heads``. The stage
    filters again afterwards, so a model with neither (TorchScript) is still capped.
    """
    for holder in (module, getattr(module, "roi_heads", None)):
        if holder is None:
            continue
        if hasattr(holder, "score_thresh"):
            holder.score_thresh = score_threshold
        if hasattr(holder, "detections_per_img"):
            holder.detections_per_img = max_detections


def detector_fn(
    model: LoadedModel, settings: DetectorSettings, executor: ExecutorSettings, device: str
) -> Callable[[torch.Tensor], list[DetectorOutput]]:
    """``fn(batch)`` for the executor: batch is (b, S, S, 3) uint8 on ``device``; one output per image."""
    module = model.module.to(device)
    cap_detections(module, settings.score_threshold, settings.max_detections)
    cuda = device.startswith("cuda")
    if cuda and executor.channels_last and not model.scripted:
        module = module.to(memory_format=torch.channels_last)
    autocast_dtype = getattr(torch, executor.dtype)
    crop = settings.crop_size

    @torch.inference_mode()
    def fn(batch: torch.Tensor) -> list[DetectorOutput]:
        # (b, S, S, 3) viewed as (b, 3, S, S): a channels-last tensor, no copy.
        images = batch.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.autocast("cuda", dtype=autocast_dtype, enabled=cuda and autocast_dtype != torch.float32):
            raw = module(list(images))
        detections = raw[1] if isinstance(raw, tuple) else raw  # scripted detectors return (losses, detections)
        kept = [_keep(d, settings.score_threshold, settings.max_detections) for d in detections]
        boxes = [k[0].float() for k in kept]
        crops = _crops(images, boxes, crop) if any(len(b) for b in boxes) else None
        out: list[DetectorOutput] = []
        start = 0
        for (_, s, lab), bx in zip(kept, boxes, strict=True):
            n = len(bx)
            c = (
                crops[start : start + n]
                if crops is not None
                else images.new_zeros((0, 3, crop, crop), dtype=torch.uint8)
            )
            out.append((bx, s.float(), lab.to(torch.int32), c))
            start += n
        return out

    return fn


def _keep(det: dict[str, Any], threshold: float, cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    mask = scores >= threshold
    boxes, scores, labels = boxes[mask], scores[mask], labels[mask]
    if len(scores) > cap:
        top = scores.topk(cap).indices
        boxes, scores, labels = boxes[top], scores[top], labels[top]
    return boxes, scores, labels


def _crops(images: torch.Tensor, boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    """Every box of every image resampled to ``size``², as uint8 NCHW, in image order."""
    crops = roi_align(
        images, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=ROI_SAMPLING_RATIO, aligned=True
    )
    return crops.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
