"""The detector's device function: a torchvision detector on a letterboxed batch, then crops cut on the device.

Runs on the executor's compute stream and keeps the device-function contract
(``visionpipe.executor.host_io``): the uint8 batch in, a dict of batched,
padded tensors out — ``boxes`` (b, D, 4) in letterbox pixels, ``scores``,
``labels``, ``count`` and ``crops`` (b, D, 3, C, C) uint8 — with D the
stage's ``max_detections``. Cutting crops here with ``roi_align`` keeps the
image on the device: only the boxes and the small crops travel back.

SSD-family models (the default ``ssdlite320_mobilenet_v3_large``) run
without any host synchronisation: resize, normalisation, backbone and head
from the model, anchors computed once at build time, and box decoding, NMS,
top-k and crops in ``detection_ops``. Other detectors (two-stage ones run
NMS inside their region proposals) go through their own post-processing,
which waits for the GPU, and are padded to the same form afterwards: they
work, but the launcher waits for each batch's compute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD

from visionpipe.services import detection_ops
from visionpipe.services.weights import LoadedModel
from visionpipe.settings import DetectorSettings, ExecutorSettings

log = logging.getLogger(__name__)

DetectorFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


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


def detector_fn(model: LoadedModel, settings: DetectorSettings, executor: ExecutorSettings, device: str) -> DetectorFn:
    """``fn(batch)`` for the executor: batch is (b, S, S, 3) uint8 on ``device``; a dict of batched tensors out."""
    module = model.module.to(device)
    cap_detections(module, settings.score_threshold, settings.max_detections)
    cuda = device.startswith("cuda")
    if cuda and executor.channels_last and not model.scripted:
        module = module.to(memory_format=torch.channels_last)
    autocast_dtype = getattr(torch, executor.dtype)
    # Autocast's weight cache lives for one call anyway; off, so the same function can be captured as a CUDA graph.
    autocast = {"device_type": "cuda", "dtype": autocast_dtype, "enabled": cuda and autocast_dtype != torch.float32,
                "cache_enabled": False}  # fmt: skip
    if isinstance(module, SSD) and not model.scripted:
        detect = _ssd_detect(module, settings, device)
    else:
        log.warning("detector %s post-processes on the host: each batch waits for the GPU", type(module).__name__)
        detect = _eager_detect(module, settings)

    @torch.inference_mode()
    def fn(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        # (b, S, S, 3) viewed as (b, 3, S, S): a channels-last tensor, no copy.
        images = batch.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.autocast(**autocast):
            out = detect(images)
        out["crops"] = detection_ops.crops(images, out["boxes"], settings.crop_size)
        return out

    return fn


def _ssd_detect(module: SSD, settings: DetectorSettings, device: str) -> Callable[[torch.Tensor], dict[str, Any]]:
    """SSD's forward without its transform and post-processing, which synchronise; same maths, fixed shapes."""
    transform = module.transform
    size = tuple(transform.fixed_size or (transform.min_size[0], transform.min_size[0]))
    mean = torch.tensor(transform.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(transform.image_std, device=device).view(1, 3, 1, 1)
    anchors = _ssd_anchors(module, size, device)
    weights = module.box_coder.weights

    def detect(images: torch.Tensor) -> dict[str, Any]:
        (h, w), (mh, mw) = images.shape[-2:], size
        x = images if (h, w) == (mh, mw) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        features = list(module.backbone((x - mean) / std).values())
        head = module.head(features)
        boxes = detection_ops.decode_boxes(head["bbox_regression"], anchors, weights)
        # Clip to the model's input, then scale back to the letterbox; Python scalars, so nothing is copied up.
        xs = boxes[..., 0::2].clamp(0.0, mw) * (w / mw)
        ys = boxes[..., 1::2].clamp(0.0, mh) * (h / mh)
        boxes = torch.stack((xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]), dim=-1)
        scores = head["cls_logits"].float().softmax(dim=-1)[..., 1:]  # class 0 is background
        out = detection_ops.select(boxes, scores, settings.score_threshold, module.nms_thresh,
                                   settings.max_detections)  # fmt: skip
        out["labels"] += 1
        return out

    return detect


def _ssd_anchors(module: SSD, size: tuple[int, ...], device: str) -> torch.Tensor:
    """The (A, 4) default boxes for a fixed input size, computed once (the generator copies from the host)."""
    with torch.inference_mode():
        probe = torch.zeros((1, 3, *size), device=device)
        features = list(module.backbone(probe).values())
        return module.anchor_generator(ImageList(probe, [tuple(size)]), features)[0].float()


def _eager_detect(module: torch.nn.Module, settings: DetectorSettings) -> Callable[[torch.Tensor], dict[str, Any]]:
    def detect(images: torch.Tensor) -> dict[str, Any]:
        raw = module(list(images))
        detections = raw[1] if isinstance(raw, tuple) else raw  # scripted detectors return (losses, detections)
        kept = []
        for det in detections:
            order = det["scores"].argsort(descending=True)
            keep = order[det["scores"][order] >= settings.score_threshold]
            kept.append({k: det[k][keep] for k in ("boxes", "scores", "labels")})
        return detection_ops.pad_detections(kept, settings.max_detections)

    return detect
