"""The detector's device function: a letterboxed uint8 batch in, a padded table of boxes and their crops out.

It keeps the device-function contract (``visionpipe.executor.host_io``): a
dict of batched tensors whose shapes depend only on the batch size b (D =
``max_detections``) — ``boxes (b, D, 4)`` xyxy in letterbox pixels, ``scores
(b, D)``, ``labels (b, D)`` int32, ``count (b,)`` and ``crops (b, D, 3, C, C)``
uint8. Rows past ``count`` are padding; the executor copies the dict back on
its download stream and the stage trims each image's rows by its count.

NanoDet (the default) and torchvision's SSD family run with no host
synchronisation on a GPU: the model's forward, then box decoding, NMS, top-k
and crops from ``detection_ops``. Other torchvision detectors (two-stage ones
run NMS inside their region proposals) go through their own post-processing,
which waits for the GPU, and are padded to the same form: they work, but the
launcher waits for each batch's compute. Crops are cut on the device, so
only the boxes and the small crops travel back, never a full frame a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD

from visionpipe.services.detector import ops as detection_ops
from visionpipe.services.models.loading import LoadedModel
from visionpipe.services.models.nanodet import INPUT_SIZE, decode_boxes, input_constants, prepare
from visionpipe.services.models.registry import NANODET_G
from visionpipe.settings import DetectorSettings, ExecutorSettings

log = logging.getLogger(__name__)

Table = dict[str, torch.Tensor]
DetectorFn = Callable[[torch.Tensor], Table]
Detect = Callable[[torch.Tensor], Table]  # (b, 3, S, S) uint8 -> boxes, scores, labels, count


def detector_fn(model: LoadedModel, settings: DetectorSettings, executor: ExecutorSettings, device: str) -> DetectorFn:
    """``fn(batch)`` for the executor: batch is (b, S, S, 3) uint8 on ``device``; returns the batched dict above."""
    build = _nanodet if model.arch == NANODET_G.name else _torchvision
    detect = build(model, settings, executor, device)
    size, expand = settings.crop_size, settings.crop_expand

    @torch.inference_mode()
    def fn(batch: torch.Tensor) -> Table:
        images = batch.permute(0, 3, 1, 2)  # (b, 3, S, S): a channels-last view, no copy
        out = detect(images)
        out["crops"] = detection_ops.cut_crops(images, out["boxes"], out["count"], size, expand)
        return out

    return fn


def _layout(model: LoadedModel, executor: ExecutorSettings, cuda: bool) -> bool:
    """channels_last where it pays: on a GPU (tensor cores) by setting, on the CPU where measured for the model."""
    if model.scripted:
        return False
    return executor.channels_last if cuda else model.channels_last_on_cpu


def _autocast(executor: ExecutorSettings, cuda: bool) -> torch.autocast:
    dtype = getattr(torch, executor.dtype)
    # Autocast's weight cache lives for one call anyway; off, so the same function can be captured as a CUDA graph.
    return torch.autocast("cuda", dtype=dtype, enabled=cuda and dtype != torch.float32, cache_enabled=False)


def _nanodet(model: LoadedModel, settings: DetectorSettings, executor: ExecutorSettings, device: str) -> Detect:
    cuda = device.startswith("cuda")
    channels_last = _layout(model, executor, cuda)
    module = model.module.to(device)
    if channels_last:  # outside inference mode, or the parameters would become inference tensors
        module = module.to(memory_format=torch.channels_last)
    side = settings.input_size or INPUT_SIZE
    input_constants(device)  # now, not in the first batch: built from host data, they would copy and sync there

    def detect(images: torch.Tensor) -> Table:
        x = prepare(images, side)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(executor, cuda):
            scores, reg = module(x)
        boxes = decode_boxes(reg, side) * (images.shape[-1] / side)  # back to letterbox pixels
        return detection_ops.select(
            boxes,
            scores,
            settings.score_threshold,
            settings.nms_iou,
            settings.max_detections,
            cross_class_iou(settings),
        )

    return detect


def cross_class_iou(settings: DetectorSettings) -> float:
    """The overlap above which boxes of different classes suppress each other (``ops.nms_keep``)."""
    return settings.nms_iou if settings.class_agnostic_nms else settings.cross_class_iou


def cap_detections(module: torch.nn.Module, score_threshold: float, max_detections: int) -> None:
    """Push the score threshold and the cap into a torchvision model's own postprocessing, where NMS is cheaper.

    Single-stage detectors (SSD, RetinaNet, FCOS) keep these on the model,
    two-stage ones (Faster/Mask/Keypoint R-CNN) on ``roi_heads``. The padding
    filters again afterwards, so a model with neither (TorchScript) is still capped.
    """
    for holder in (module, getattr(module, "roi_heads", None)):
        if holder is None:
            continue
        if hasattr(holder, "score_thresh"):
            holder.score_thresh = score_threshold
        if hasattr(holder, "detections_per_img"):
            holder.detections_per_img = max_detections


def _torchvision(model: LoadedModel, settings: DetectorSettings, executor: ExecutorSettings, device: str) -> Detect:
    module = model.module.to(device)
    cap_detections(module, settings.score_threshold, settings.max_detections)
    cuda = device.startswith("cuda")
    if cuda and _layout(model, executor, cuda):
        module = module.to(memory_format=torch.channels_last)
    if isinstance(module, SSD) and not model.scripted:
        forward = _ssd_detect(module, settings, device)
    else:
        log.warning("detector %s post-processes on the host: each batch waits for the GPU", type(module).__name__)
        forward = _eager_detect(module, settings)

    def detect(images: torch.Tensor) -> Table:
        with _autocast(executor, cuda):
            return forward(images.float().div_(255.0))

    return detect


def _ssd_detect(module: SSD, settings: DetectorSettings, device: str) -> Detect:
    """SSD's forward without its transform and post-processing, which synchronise; same maths, fixed shapes."""
    transform = module.transform
    size = tuple(transform.fixed_size or (transform.min_size[0], transform.min_size[0]))
    mean = torch.tensor(transform.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(transform.image_std, device=device).view(1, 3, 1, 1)
    anchors = _ssd_anchors(module, size, device)
    weights = module.box_coder.weights

    def detect(images: torch.Tensor) -> Table:
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
        limit, cross = settings.score_threshold, cross_class_iou(settings)
        out = detection_ops.select(boxes, scores, limit, module.nms_thresh, settings.max_detections, cross)
        labels = out["labels"]
        out["labels"] = torch.where(labels >= 0, labels + 1, labels)  # back to COCO's 91 slots; padding stays -1
        return out

    return detect


def _ssd_anchors(module: SSD, size: tuple[int, ...], device: str) -> torch.Tensor:
    """The (A, 4) default boxes for a fixed input size, computed once (the generator copies from the host)."""
    with torch.inference_mode():
        probe = torch.zeros((1, 3, *size), device=device)
        features = list(module.backbone(probe).values())
        return module.anchor_generator(ImageList(probe, [tuple(size)]), features)[0].float()


def _eager_detect(module: torch.nn.Module, settings: DetectorSettings) -> Detect:
    def detect(images: torch.Tensor) -> Table:
        raw = module(list(images))
        detections = raw[1] if isinstance(raw, tuple) else raw  # scripted detectors return (losses, detections)
        return detection_ops.pad_detections(detections, settings.score_threshold, settings.max_detections)

    return detect
