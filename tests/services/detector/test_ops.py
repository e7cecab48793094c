"""Sync-free detection ops: Cluster-NMS equals greedy NMS, padding keeps the contract."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

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
