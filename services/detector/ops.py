"""Detection post-processing on the device with no host synchronisation: box decoding, NMS, top-k, crops.

Every detector's device function (``services/detector/model.py``: NanoDet, torchvision's SSD family, other
torchvision detectors padded after their own post-processing) ends here, so there is one NMS and one way to
cut crops.

A detector's device function runs on the executor's compute stream and must
return as soon as its kernels are queued (the launcher thread then queues the
next batch). torchvision's own post-processing cannot: boolean-mask indexing,
``nonzero``, ``.item()``, and ``torchvision.ops.nms`` itself (its CUDA kernel
copies the suppression mask to the host and finishes on the CPU) all wait
for the GPU. Everything here works on fixed shapes instead — a batch of b
images always gives (b, D, ...) tensors, padded, with a per-image ``count`` —
so the same kernels run whatever the images hold.

NMS is Cluster-NMS (Zheng et al., "Enhancing Geometric Factors in Model
Learning and Inference for Object Detection and Instance Segmentation",
2020): a box is suppressed by any *kept* higher-scoring box it overlaps, and
the keep mask is iterated to a fixed point. Once it has converged it equals
greedy NMS exactly; ``NMS_ITERATIONS`` rounds converge on dense detector
output (the tests compare with ``torchvision.ops.batched_nms``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

# Candidates kept (by score, over all classes) before NMS: the IoU matrix is K² per image, 200² = 40k entries.
PRE_NMS_CANDIDATES = 200
# Cluster-NMS rounds: each round settles at least one more box of every suppression chain; chains of overlapping
# boxes longer than a dozen do not occur in a detector's top few hundred, and ten rounds of a (b, 200, 200) max
# are ~20 small kernels.
NMS_ITERATIONS = 10
# roi_align samples 2x2 points per output pixel: enough to avoid aliasing when a crop shrinks, cheap when it grows.
ROI_SAMPLING_RATIO = 2
# torchvision's BoxCoder clamp: exp() of a larger log-scale would overflow for a wild regression output.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """(b, A, 4) regression outputs against (A, 4) xyxy anchors → (b, A, 4) xyxy boxes (torchvision's BoxCoder)."""
    wx, wy, ww, wh = weights
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    d = deltas.float()
    dx, dy = d[..., 0] / wx, d[..., 1] / wy
    dw = (d[..., 2] / ww).clamp(max=BBOX_XFORM_CLIP)
    dh = (d[..., 3] / wh).clamp(max=BBOX_XFORM_CLIP)
    cx, cy = dx * widths + ctr_x, dy * heights + ctr_y
    w, h = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(b, K, 4) xyxy → (b, K, K) IoU of every pair within each image."""
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-9)


def nms_keep(
    boxes: torch.Tensor, labels: torch.Tensor, iou_threshold: float, cross_class_iou: float = 1.0
) -> torch.Tensor:
    """Which of (b, K) boxes, sorted by score (highest first), survive NMS; (b, K) bool.

    A kept box suppresses every lower-scoring box of its own class that overlaps it by more than
    ``iou_threshold`` (``torchvision.ops.batched_nms``), and one of *any* class that overlaps it by more
    than ``cross_class_iou``: a detector that scores each location for every class puts the same box out
    once per plausible class (a cat at 0.54 and a dog at 0.42), and a person wants one label per object.
    1.0 turns that off; ``cross_class_iou`` <= ``iou_threshold`` is class-agnostic NMS.
    """
    iou = pairwise_iou(boxes).triu(diagonal=1)  # iou[i, j] for i ranked above j
    same = labels[:, :, None] == labels[:, None, :]
    suppresses = ((iou > iou_threshold) & (same | (iou > cross_class_iou))).to(iou.dtype)
    keep = torch.ones(labels.shape, dtype=iou.dtype, device=iou.device)
    for _ in range(NMS_ITERATIONS):
        keep = ((suppresses * keep[:, :, None]).amax(dim=1) == 0).to(iou.dtype)
    return keep.bool()


def select(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    cross_class_iou: float = 1.0,
) -> dict[str, torch.Tensor]:
    """(b, A, 4) boxes and (b, A, C) class scores → the top ``max_detections`` per image after NMS, padded.

    Returns ``boxes`` (b, D, 4) float32, ``scores`` (b, D) float32, ``labels`` (b, D) int32 (class index
    into ``scores``' last dimension) and ``count`` (b,) int32: rows past an image's count are padding
    (zero boxes and scores, label -1). A candidate counts when its score is above the threshold, as in
    torchvision's own post-processing. NMS is per class, and across classes above ``cross_class_iou``
    (:func:`nms_keep`).
    """
    b, a, c = scores.shape
    k = min(PRE_NMS_CANDIDATES, a * c)
    top, idx = scores.reshape(b, a * c).float().topk(k, dim=1)  # sorted, highest first
    labels = idx % c
    cand = boxes.float().gather(1, (idx // c)[..., None].expand(b, k, 4))
    valid = (top > score_threshold) & nms_keep(cand, labels, iou_threshold, cross_class_iou)
    d = min(max_detections, k)
    ranked = torch.where(valid, top, torch.full_like(top, -1.0))
    final_scores, order = ranked.topk(d, dim=1)  # kept boxes first, still by score
    count = valid.sum(dim=1).clamp(max=d).to(torch.int32)
    real = torch.arange(d, device=count.device) < count[:, None]  # (b, D): which rows hold a detection
    return {
        "boxes": cand.gather(1, order[..., None].expand(b, d, 4)) * real[..., None],
        "scores": torch.where(real, final_scores, torch.zeros_like(final_scores)),
        "labels": torch.where(real, labels.gather(1, order), torch.full_like(order, -1)).to(torch.int32),
        "count": count,
    }


def pad_detections(detections: list[dict[str, torch.Tensor]], threshold: float, k: int) -> dict[str, torch.Tensor]:
    """A model's own per-image outputs (torchvision's) in the padded form: the best ``k`` of each, count = >= threshold.

    For models whose post-processing is not sync-free: the result keeps the contract, the launcher still waits.
    Sorting first makes the valid rows a prefix, so the count is a sum, not a mask.
    """
    boxes, scores, labels = [], [], []
    for det in detections:
        s, order = det["scores"].float().sort(descending=True)
        s, order = s[:k], order[:k]
        pad = k - s.shape[0]
        boxes.append(F.pad(det["boxes"][order].float(), (0, 0, 0, pad)))
        scores.append(F.pad(s, (0, pad), value=-1.0))
        labels.append(F.pad(det["labels"][order].long(), (0, pad), value=-1))
    score = torch.stack(scores)
    valid = score >= threshold
    count = valid.sum(1)
    return {
        "boxes": torch.stack(boxes) * valid.unsqueeze(-1),
        "scores": torch.where(valid, score, torch.zeros_like(score)),
        "labels": torch.where(valid, torch.stack(labels), torch.full_like(count.unsqueeze(1), -1)).to(torch.int32),
        "count": count.to(torch.int32),
    }


def square_boxes(boxes: torch.Tensor, expand: float) -> torch.Tensor:
    """Squares of side ``expand`` x the longer side, around each box's centre: crops keep their aspect and context."""
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    half = torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) * (expand / 2)
    return torch.stack((cx - half, cy - half, cx + half, cy + half), -1)


def cut_crops(images: torch.Tensor, boxes: torch.Tensor, count: torch.Tensor, size: int, expand: float) -> torch.Tensor:
    """Every box of every image resampled to ``size``², as ``(B, K, 3, size, size)`` uint8; rows past count are zero.

    ``expand`` > 0 cuts the box's square (see :func:`square_boxes`); parts outside the image are black.
    On a GPU one ``roi_align`` cuts every row, padding included, with no sync. On the CPU, where a
    sync is free, only the real rows are cut (K is then the batch's largest count), each by the uint8
    antialiased resize: over twenty times cheaper a crop than roi_align there, which had cost more than
    the detector itself at 20 crops (benchmarks/RESULTS.md, "Pipeline with the bundled models").
    """
    regions = square_boxes(boxes, expand) if expand > 0 else boxes
    cut = cut_each if images.device.type == "cpu" else cut_all
    return cut(images, regions, count, size)


def cut_all(images: torch.Tensor, regions: torch.Tensor, count: torch.Tensor, size: int) -> torch.Tensor:
    """An accelerator's crops: one roi_align over every row, padding rows zeroed by mask (static shapes)."""
    b, k = regions.shape[:2]
    # arange + expand, not repeat_interleave: some torch versions build its repeats tensor from a host value.
    index = torch.arange(b, device=regions.device, dtype=regions.dtype)[:, None].expand(b, k).reshape(b * k, 1)
    rois = torch.cat((index, regions.reshape(-1, 4)), 1)
    crops = roi_align(
        images.float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=ROI_SAMPLING_RATIO, aligned=True
    )
    valid = (torch.arange(k, device=regions.device) < count.unsqueeze(1)).reshape(-1, 1, 1, 1)
    return (crops.round_().clamp_(0, 255) * valid).to(torch.uint8).view(b, k, 3, size, size)


def cut_each(images: torch.Tensor, regions: torch.Tensor, count: torch.Tensor, size: int) -> torch.Tensor:
    """The CPU's crops: each real box sliced (to whole pixels), zero-padded where it leaves the image, resized.

    Rows go up to the batch's largest count, not to the table's: a padding row is 150 KB of zeros to write.
    """
    b = regions.shape[0]
    h, w = images.shape[-2:]
    counts = count.tolist()
    out = images.new_zeros((b, max(counts, default=0), 3, size, size))
    for i, n in enumerate(counts):
        for j, (x1, y1, x2, y2) in enumerate(regions[i, :n].round().int().tolist()):
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            patch = images[i : i + 1, :, max(y1, 0) : min(y2, h), max(x1, 0) : min(x2, w)]
            if patch.numel() == 0:
                continue  # entirely outside the image: black, as roi_align would give
            if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                patch = F.pad(patch, (max(-x1, 0), max(x2 - w, 0), max(-y1, 0), max(y2 - h, 0)))
            out[i, j] = F.interpolate(patch, (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return out
