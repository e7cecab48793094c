"""Per-location class scores and boxes -> a fixed-size, padded table of detections, batched.

The shape of every output depends only on the batch size (``max_detections``
rows per image, a per-image ``count``), so the executor can copy it back on its
download stream and the stage trims by count. No per-image Python loop and no
``.item()``/``.cpu()``: one ``torchvision.ops.batched_nms`` call covers the whole
batch. NMS returns a data-dependent number of boxes, so torchvision learns that
count on the host once per batch — the one sync left, and unavoidable with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

# Candidates kept per image before NMS, as upstream NanoDet's nms_pre: enough for a crowded scene. Keep
# batch x PRE_NMS_TOPK below 25,000: beyond 100,000 coordinates batched_nms on CUDA switches to a per-class loop.
PRE_NMS_TOPK = 1000


@dataclass(frozen=True)
class Detections:
    """``boxes (B, K, 4)`` xyxy, ``scores (B, K)``, ``labels (B, K)`` int64, ``count (B,)``.

    Rows ``>= count[b]`` are padding (zeros, label -1); valid rows are sorted by descending score.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    count: torch.Tensor


def select(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    class_agnostic: bool = False,
) -> Detections:
    """Top candidates per image, NMS per image and class (or per image), padded to ``max_detections``.

    ``boxes (B, N, 4)`` per location, ``scores (B, N, C)`` per location and class. Candidates are
    the ``PRE_NMS_TOPK`` best (location, class) pairs per image; those at or below the threshold
    get score -1, which sorts them below every valid one, and NMS only lets a box suppress
    lower-scored ones, so they can never remove a valid box. ``class_agnostic`` lets boxes of
    different classes suppress each other (one label per object).
    """
    scores = scores.float()
    b, n, c = scores.shape
    k = min(PRE_NMS_TOPK, n * c)
    top, index = scores.reshape(b, n * c).topk(k, dim=1)  # (B, k), sorted
    location, label = index // c, index % c
    cand = torch.gather(boxes.float(), 1, location.unsqueeze(-1).expand(b, k, 4)).reshape(-1, 4)
    valid = (top > score_threshold).reshape(-1)
    image = torch.arange(b, device=scores.device).repeat_interleave(k)
    label = label.reshape(-1)
    score = torch.where(valid, top.reshape(-1), torch.full_like(valid, -1.0, dtype=torch.float32))
    # On the CPU a sync costs nothing, and NMS over the valid candidates only is ~10x cheaper with the same
    # result (invalid ones could never suppress a valid box). Elsewhere the shapes stay static.
    on_cpu = cand.device.type == "cpu"
    pick = valid.nonzero().squeeze(1) if on_cpu else torch.arange(cand.shape[0], device=cand.device)
    groups = image if class_agnostic else image * c + label
    keep = pick[batched_nms(cand[pick], score[pick], groups[pick], iou_threshold)]
    return _pad(keep, image, valid, cand, score, label, b, max_detections)


def _pad(
    keep: torch.Tensor,
    image: torch.Tensor,
    valid: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    b: int,
    k: int,
) -> Detections:
    """Scatter the kept candidates (in NMS's descending-score order) into a ``(b, k)`` table.

    Ranks within each image come from a stable sort by (image, invalid) and ``searchsorted``:
    no loop over images. Rejected rows (invalid, or beyond ``k``) go to one extra dump slot.
    """
    group = image[keep] * 2 + (~valid[keep]).long()
    group, order = torch.sort(group, stable=True)
    keep = keep[order]
    kept_image, kept_valid = image[keep], valid[keep]
    rank = torch.arange(keep.numel(), device=keep.device) - torch.searchsorted(group, kept_image * 2)
    ok = kept_valid & (rank < k)
    dump = b * k
    slot = torch.where(ok, kept_image * k + rank, torch.full_like(rank, dump))
    out_boxes = boxes.new_zeros(dump + 1, 4)
    out_scores = scores.new_zeros(dump + 1)
    out_labels = torch.full((dump + 1,), -1, dtype=torch.long, device=keep.device)
    out_boxes[slot] = boxes[keep]
    out_scores[slot] = scores[keep]
    out_labels[slot] = labels[keep]
    count = torch.zeros(b, dtype=torch.long, device=keep.device).scatter_add_(0, kept_image, ok.long())
    return Detections(out_boxes[:dump].view(b, k, 4), out_scores[:dump].view(b, k), out_labels[:dump].view(b, k), count)
