"""Detection post-processing on the device with no host synchronisation: box decoding, NMS, top-k, crops.

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


def nms_keep(boxes: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Which of (b, K) boxes, sorted by score (highest first), survive per-class NMS; (b, K) bool.

    Boxes of different classes never suppress each other: each class is shifted to its own region
    of the plane (the trick of ``torchvision.ops.batched_nms``).
    """
    shift = (boxes.amax(dim=(1, 2), keepdim=True) + 1.0) * labels[..., None].to(boxes.dtype)
    iou = pairwise_iou(boxes + shift).triu(diagonal=1)  # iou[i, j] for i ranked above j
    keep = torch.ones(labels.shape, dtype=iou.dtype, device=iou.device)
    for _ in range(NMS_ITERATIONS):
        keep = ((iou * keep[:, :, None]).amax(dim=1) <= iou_threshold).to(iou.dtype)
    return keep.bool()


def select(
    boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float, iou_threshold: float, max_detections: int
) -> dict[str, torch.Tensor]:
    """(b, A, 4) boxes and (b, A, C) class scores → the top ``max_detections`` per image after NMS, padded.

    Returns ``boxes`` (b, D, 4) float32, ``scores`` (b, D) float32, ``labels`` (b, D) int32 (class index
    into ``scores``' last dimension) and ``count`` (b,) int32: rows past an image's count are padding.
    """
    b, a, c = scores.shape
    k = min(PRE_NMS_CANDIDATES, a * c)
    top, idx = scores.reshape(b, a * c).float().topk(k, dim=1)  # sorted, highest first
    labels = idx % c
    cand = boxes.float().gather(1, (idx // c)[..., None].expand(b, k, 4))
    valid = (top >= score_threshold) & nms_keep(cand, labels, iou_threshold)
    d = min(max_detections, k)
    ranked = torch.where(valid, top, torch.full_like(top, -1.0))
    final_scores, order = ranked.topk(d, dim=1)  # kept boxes first, still by score
    return {
        "boxes": cand.gather(1, order[..., None].expand(b, d, 4)),
        "scores": final_scores.clamp(min=0.0),
        "labels": labels.gather(1, order).to(torch.int32),
        "count": valid.sum(dim=1).clamp(max=d).to(torch.int32),
    }


def crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Every box of every image resampled to ``size``² from (b, 3, H, W) floats in [0, 1] → (b, D, 3, size, size) uint8.

    Padding rows are cut too (from whatever box they hold): fixed shapes cost a few wasted crops, never a sync.
    """
    b, d = boxes.shape[:2]
    # arange + expand, not repeat_interleave: some torch versions build its repeats tensor from a host value.
    index = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None].expand(b, d).reshape(b * d)
    rois = torch.cat((index[:, None], boxes.reshape(b * d, 4).to(images.dtype)), dim=1)
    out = roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=ROI_SAMPLING_RATIO,
                    aligned=True)  # fmt: skip
    return out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).view(b, d, 3, size, size)


def pad_detections(per_image: list[dict[str, torch.Tensor]], max_detections: int) -> dict[str, torch.Tensor]:
    """Per-image variable-length detections (a model's own post-processing) in the padded, batched form.

    For models whose post-processing is not sync-free: the result keeps the contract, the launcher still waits.
    """
    b = len(per_image)
    ref = per_image[0]["boxes"] if per_image else torch.zeros(0, 4)
    out = {
        "boxes": ref.new_zeros((b, max_detections, 4), dtype=torch.float32),
        "scores": ref.new_zeros((b, max_detections), dtype=torch.float32),
        "labels": ref.new_zeros((b, max_detections), dtype=torch.int32),
        "count": ref.new_zeros((b,), dtype=torch.int32),
    }
    for i, det in enumerate(per_image):
        n = min(len(det["scores"]), max_detections)
        out["boxes"][i, :n] = det["boxes"][:n].float()
        out["scores"][i, :n] = det["scores"][:n].float()
        out["labels"][i, :n] = det["labels"][:n].to(torch.int32)
        out["count"][i] = n
    return out
