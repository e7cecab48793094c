"""NanoDet-g: the module's shape and size, box decoding, and the batched padded NMS against a per-image one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import batched_nms

from visionpipe.services.detector.ops import select
from visionpipe.services.models.nanodet import COCO80, INPUT_SIZE, REG_MAX, NanoDet, decode_boxes
from visionpipe.services.models.registry import NANODET_G


def test_nanodet_g_is_the_upstream_architecture() -> None:
    model = NanoDet().eval()
    assert sum(p.numel() for p in model.parameters()) == 3_786_068  # upstream nanodet-g.yml: "Params: 3.8M"
    assert len(model.conv_names()) == 34 and len(COCO80) == 80
    with torch.inference_mode():
        scores, reg = model(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE))
    locations = sum((INPUT_SIZE // s) ** 2 for s in (8, 16, 32))
    assert scores.shape == (2, locations, 80) and reg.shape == (2, locations, 4 * (REG_MAX + 1))


def test_coco_names_are_torchvisions_without_the_gaps() -> None:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    cats = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    assert [c for c in cats[1:] if c != "N/A"] == list(COCO80)


def test_decoding_centres_and_distances() -> None:
    """All mass on bin d puts each side d strides from the location's centre, (x + 0.5) * stride."""
    n = sum((INPUT_SIZE // s) ** 2 for s in (8, 16, 32))
    reg = torch.full((1, n, 4, REG_MAX + 1), -1e4)
    reg[..., 2] = 1e4  # distance 2 strides on every side
    boxes = decode_boxes(reg.view(1, n, -1), INPUT_SIZE)[0]
    # Location (row 3, column 5) of stride 8: centre (44, 28); its box reaches 16 px to each side.
    assert boxes[3 * 52 + 5].tolist() == pytest.approx([28.0, 12.0, 60.0, 44.0])
    # The first stride-32 location: centre (16, 16), 64 px each way, clamped to the input.
    assert boxes[52 * 52 + 26 * 26].tolist() == pytest.approx([0.0, 0.0, 80.0, 80.0])


def naive(boxes: torch.Tensor, scores: torch.Tensor, thr: float, iou: float, k: int) -> list[tuple]:
    """Per image, the obvious way: every (location, class) above the threshold, NMS per class, the best k."""
    out = []
    for b in range(scores.shape[0]):
        loc, cls = (scores[b] > thr).nonzero(as_tuple=True)
        s = scores[b, loc, cls]
        keep = batched_nms(boxes[b, loc], s, cls, iou)[:k]
        out.append((boxes[b, loc][keep], s[keep], cls[keep]))
    return out


@pytest.mark.parametrize("threshold", [0.05, 0.4, 0.9])
def test_batched_select_equals_per_image_nms(threshold: float) -> None:
    g = torch.Generator().manual_seed(3)
    b, n, c, k = 4, 300, 5, 20
    xy = torch.rand(b, n, 2, generator=g) * 300
    boxes = torch.cat((xy, xy + 20 + torch.rand(b, n, 2, generator=g) * 80), -1)
    scores = torch.rand(b, n, c, generator=g) ** 3  # mostly low, a few high: realistic, and ties are unlikely
    table = select(boxes, scores, threshold, 0.6, k)
    for i, (rb, rs, rl) in enumerate(naive(boxes, scores, threshold, 0.6, k)):
        m = int(table["count"][i])
        assert m == len(rs)
        assert torch.equal(table["labels"][i, :m].long(), rl) and torch.allclose(table["scores"][i, :m], rs)
        assert torch.allclose(table["boxes"][i, :m], rb)
        assert (table["labels"][i, m:] == -1).all() and not table["scores"][i, m:].any()


def test_class_agnostic_nms_keeps_one_label_per_object() -> None:
    boxes = torch.tensor([[[10.0, 10, 100, 100], [12, 11, 101, 99]]])
    scores = torch.tensor([[[0.9, 0.0], [0.0, 0.5]]])  # the same object, once as each class
    assert select(boxes, scores, 0.4, 0.6, 5)["count"].tolist() == [2]
    agnostic = select(boxes, scores, 0.4, 0.6, 5, cross_class_iou=0.6)
    assert agnostic["count"].tolist() == [1] and agnostic["labels"][0, 0].item() == 0


def test_the_bundled_file_loads_strictly(bundled_models: Path) -> None:
    from safetensors.torch import load_file

    NanoDet().load_state_dict(load_file(str(NANODET_G.path(bundled_models))), strict=True)
