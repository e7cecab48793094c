"""Sync-free detection ops: Cluster-NMS equals greedy NMS, padding keeps the contract."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms, box_iou

from visionpipe.services.detector.ops import nms_keep, pad_detections, select


@pytest.mark.parametrize("seed", range(8))
def test_cluster_nms_matches_torchvisions_greedy_nms(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = 200
    xy = torch.rand(2, k, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + torch.rand(2, k, 2, generator=g) * 80 + 5], -1)
    scores = torch.rand(2, k, generator=g).sort(dim=1, descending=True).values
    labels = torch.randint(0, 3, (2, k), generator=g)
    keep = nms_keep(boxes, labels, 0.5)
    for i in range(2):
        want = torch.zeros(k, dtype=torch.bool)
        want[batched_nms(boxes[i], scores[i], labels[i], 0.5)] = True
        assert torch.equal(keep[i], want)


@pytest.mark.parametrize("seed", range(4))
def test_cross_class_nms_is_greedy_nms_with_a_second_overlap_across_classes(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = 120
    xy = torch.rand(1, k // 2, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(1, k // 2, 2, generator=g) * 60 + 20], -1)
    # Half the boxes are near-copies of the others (what a detector puts out once per plausible class).
    boxes = torch.cat([boxes, boxes + torch.rand(1, k // 2, 4, generator=g) * 6 - 3], 1)
    boxes = boxes[:, torch.randperm(k, generator=g)]
    labels = torch.randint(0, 3, (1, k), generator=g)
    keep = nms_keep(boxes, labels, 0.5, cross_class_iou=0.8)
    # Greedy, in score order: a box goes if a kept one above it overlaps it past its class's or every class's limit.
    want: list[int] = []
    iou = box_iou(boxes[0], boxes[0])
    for j in range(k):
        if all(iou[i, j] <= (0.5 if labels[0, i] == labels[0, j] else 0.8) for i in want):
            want.append(j)
    assert keep[0].nonzero().flatten().tolist() == want
    assert keep.sum() < nms_keep(boxes, labels, 0.5).sum()  # the cross-class limit removed something here


def test_one_box_put_out_as_two_classes_keeps_the_higher_only() -> None:
    boxes = torch.tensor([[[10.0, 10, 100, 100], [10.5, 10, 100, 100.5], [60, 60, 150, 150]]])
    scores = torch.tensor([[[0.54, 0.0], [0.0, 0.42], [0.0, 0.5]]])  # a cat, the same box as a dog, a dog beside it
    out = select(boxes, scores, 0.3, 0.6, 5, cross_class_iou=0.8)
    assert out["count"].tolist() == [2] and out["labels"][0, :2].tolist() == [0, 1]
    assert out["scores"][0, :2].tolist() == pytest.approx([0.54, 0.5])
    assert select(boxes, scores, 0.3, 0.6, 5)["count"].tolist() == [3]  # per class alone: the duplicate stays


def test_select_pads_to_fixed_shapes_with_a_count() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]])  # two overlap, one apart
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.2]]])  # (b, A, C)
    out = select(boxes, scores, score_threshold=0.1, iou_threshold=0.5, max_detections=4)
    assert out["boxes"].shape == (1, 4, 4) and out["count"].tolist() == [2]
    assert out["scores"][0, :2].tolist() == pytest.approx([0.9, 0.2]) and out["labels"][0, :2].tolist() == [0, 1]


def test_pad_detections_keeps_the_contract() -> None:
    def dets(n: int) -> dict[str, torch.Tensor]:
        return {"boxes": torch.ones(n, 4), "scores": torch.ones(n), "labels": torch.ones(n, dtype=torch.int64)}

    per_image = [dets(3), dets(0)]
    out = pad_detections(per_image, threshold=0.0, k=2)
    assert out["boxes"].shape == (2, 2, 4) and out["count"].tolist() == [2, 0] and out["labels"].dtype == torch.int32
