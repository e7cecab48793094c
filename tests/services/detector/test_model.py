"""The detector's device function: the batched contract, torchvision's own results, crops cut exactly on the box."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from tests.services.helpers import CROP, DETECTOR, INPUT_SIZE, MAX_DETECTIONS
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.detector.ops import cut_all, cut_each, pad_detections, square_boxes
from visionpipe.services.models.loading import RANDOM, load_model
from visionpipe.settings import DetectorSettings, ExecutorSettings


@pytest.mark.parametrize("name", [DETECTOR, "nanodet_g"])
def test_detector_fn_returns_a_padded_batch_with_counts(name: str) -> None:
    """Fixed shapes for a batch size (the executor's contract), the real rows first, padding zeroed."""
    model = load_model("detection", name, RANDOM)
    settings = DetectorSettings(model=name, score_threshold=0.0, max_detections=MAX_DETECTIONS, crop_size=CROP)
    fn = detector_fn(model, settings, ExecutorSettings(), "cpu")
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8))
    out = fn(batch)
    d = MAX_DETECTIONS  # fixed shapes, padded: the device-function contract
    assert out["boxes"].shape == (2, d, 4) and out["scores"].shape == (2, d) and out["labels"].shape == (2, d)
    assert out["crops"].shape == (2, d, 3, CROP, CROP) and out["crops"].dtype == torch.uint8
    assert out["count"].tolist() == [d, d]  # threshold 0: every slot holds a box
    boxes = out["boxes"]
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    for i in range(2):
        n = int(out["count"][i])
        boxes = out["boxes"][i, :n]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert (out["scores"][i, :n][:-1] >= out["scores"][i, :n][1:]).all()
        assert (out["labels"][i, n:] == -1).all() and not out["crops"][i, n:].any()


def test_sync_free_ssd_gives_torchvisions_own_detections() -> None:
    """Same boxes, scores and labels as SSD's own (host-synchronising) post-processing, at two letterbox sizes."""
    torch.manual_seed(0)
    model = load_model("detection", DETECTOR, RANDOM)
    head = model.module.head

    class Spread(torch.nn.Module):  # random weights score every class alike; spread them so the ranking means something
        def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            out = head(feats)
            g = torch.Generator().manual_seed(1)
            return {
                "cls_logits": torch.randn(out["cls_logits"].shape, generator=g) * 4,
                "bbox_regression": torch.randn(out["bbox_regression"].shape, generator=g) * 0.5,
            }

    model.module.head = Spread()
    for side in (INPUT_SIZE, 2 * INPUT_SIZE):
        settings = DetectorSettings(model=DETECTOR, score_threshold=0.3, max_detections=10, crop_size=16)
        fn = detector_fn(model, settings, ExecutorSettings(), "cpu")
        batch = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (2, side, side, 3), dtype=np.uint8))
        out = fn(batch)
        with torch.inference_mode():
            ref = model.module(list(batch.permute(0, 3, 1, 2).float() / 255))
        for i in range(2):
            n = int(out["count"][i])
            assert n == len(ref[i]["scores"]) > 0
            torch.testing.assert_close(out["scores"][i, :n], ref[i]["scores"])
            assert out["labels"][i, :n].tolist() == ref[i]["labels"].tolist()
            torch.testing.assert_close(out["boxes"][i, :n], ref[i]["boxes"], atol=1e-3, rtol=1e-4)


def test_threshold_counts_only_boxes_above_it() -> None:
    """torchvision's per-image lists become one table; the count is what passes the threshold, capped."""
    dets = [
        {
            "boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]]),
            "scores": torch.tensor([0.2, 0.9, 0.5]),
            "labels": torch.tensor([3, 1, 2]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    table = pad_detections(dets, threshold=0.4, k=2)
    assert table["count"].tolist() == [2, 0]
    assert table["scores"][0].tolist() == pytest.approx([0.9, 0.5]) and table["labels"][0].tolist() == [1, 2]
    assert table["boxes"][0, 0].tolist() == [1, 1, 5, 5] and table["labels"][1].tolist() == [-1, -1]


@pytest.mark.parametrize("cut", [cut_each, cut_all], ids=["cpu", "static"])
def test_detector_crop_is_the_box_content(cut: Callable[..., torch.Tensor]) -> None:
    """A white square in a black image cut exactly on its box is all white; padding rows stay black.

    ``cpu`` is the path the CPU takes (each real box resized), ``static`` an accelerator's (one roi_align).
    """
    image = torch.zeros(1, 100, 100, 3, dtype=torch.uint8).permute(0, 3, 1, 2)  # channels-last, as the stage's
    image[:, :, 20:60, 30:70] = 255
    boxes = torch.tensor([[[30.0, 20.0, 70.0, 60.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]])
    crops = cut(image, boxes, torch.tensor([2]), 16)
    rows = 2 if cut is cut_each else 3  # the CPU cuts rows up to the batch's largest count, a GPU every row
    assert crops.shape == (1, rows, 3, 16, 16) and crops.dtype == torch.uint8
    assert (crops[0, 0] == 255).all() and (crops[0, 1:] == 0).all()


def test_square_crops_keep_context_and_black_outside_the_image() -> None:
    """A 1.2x square of a 40x40 box: 4 px of black border each side of 48; past the image's edge, black too."""
    image = torch.zeros(1, 100, 100, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    image[:, :, 20:60, 30:70] = 255
    image[:, :, 0:10, 0:10] = 255
    boxes = torch.tensor([[[30.0, 20.0, 70.0, 60.0], [0.0, 0.0, 10.0, 10.0]]])
    for cut in (cut_each, cut_all):
        square = cut(image, square_boxes(boxes, 1.2), torch.tensor([2]), 48)
        assert (square[0, 0, :, 8:40, 8:40] == 255).all() and (square[0, 0, :, :2] == 0).all()
        corner = square[0, 1]  # the 12x12 square around a 10x10 corner box reaches 1 px out: 4 px of black
        assert (corner[:, :2, :2] == 0).all() and (corner[:, 6:42, 6:42] == 255).all()
