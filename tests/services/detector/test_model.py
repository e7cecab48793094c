"""The detector's device function: the batched contract, torchvision's own results, and crops cut on the box."""

from __future__ import annotations

import numpy as np
import torch

from tests.services.helpers import CROP, DETECTOR, INPUT_SIZE, MAX_DETECTIONS
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.weights import RANDOM, load_model
from visionpipe.settings import DetectorSettings, ExecutorSettings


def test_detector_fn_caps_boxes_and_cuts_crops() -> None:
    model = load_model("detection", DETECTOR, RANDOM)
    settings = DetectorSettings(model=DETECTOR, score_threshold=0.0, max_detections=MAX_DETECTIONS, crop_size=CROP)
    fn = detector_fn(model, settings, ExecutorSettings(), "cpu")
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8))
    out = fn(batch)
    d = MAX_DETECTIONS  # fixed shapes, padded: the device-function contract
    assert out["boxes"].shape == (2, d, 4) and out["scores"].shape == (2, d) and out["labels"].shape == (2, d)
    assert out["crops"].shape == (2, d, 3, CROP, CROP) and out["crops"].dtype == torch.uint8
    assert out["count"].tolist() == [d, d]  # threshold 0: every slot holds a box
    boxes = out["boxes"]
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()


def test_sync_free_ssd_gives_torchvisions_own_detections() -> None:
    """Same boxes, scores and labels as SSD's own (host-synchronising) post-processing, at two letterbox sizes."""
    torch.manual_seed(0)
    model = load_model("detection", DETECTOR, RANDOM)
    head = model.module.head

    class Spread(torch.nn.Module):  # random weights score every class alike; spread them so the ranking means something
        def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            out = head(feats)
            g = torch.Generator().manual_seed(1)
            return {"cls_logits": torch.randn(out["cls_logits"].shape, generator=g) * 4,
                    "bbox_regression": torch.randn(out["bbox_regression"].shape, generator=g) * 0.5}  # fmt: skip

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


def test_detector_crop_is_the_box_content() -> None:
    """roi_align cuts exactly the box: a white square in a black image gives an all-white crop."""
    from visionpipe.services.detection_ops import crops

    image = torch.zeros(1, 3, 100, 100)
    image[:, :, 20:60, 30:70] = 1.0
    out = crops(image, torch.tensor([[[30.0, 20.0, 70.0, 60.0], [0.0, 0.0, 10.0, 10.0]]]), 16)
    assert out.shape == (1, 2, 3, 16, 16)
    assert (out[0, 0] == 255).all() and (out[0, 1] == 0).all()
