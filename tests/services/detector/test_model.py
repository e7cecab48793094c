"""The detector's device function: capped boxes, and crops cut exactly on the box."""

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
    outputs = fn(batch)
    assert len(outputs) == 2
    for boxes, scores, labels, crops in outputs:
        n = len(boxes)
        assert 0 < n <= MAX_DETECTIONS
        assert boxes.shape == (n, 4) and scores.shape == (n,) and labels.shape == (n,)
        assert crops.shape == (n, 3, CROP, CROP) and crops.dtype == torch.uint8
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_detector_crop_is_the_box_content() -> None:
    """roi_align cuts exactly the box: a white square in a black image gives an all-white crop."""
    from visionpipe.services.detector.model import _crops

    image = torch.zeros(1, 3, 100, 100)
    image[:, :, 20:60, 30:70] = 1.0
    crops = _crops(image, [torch.tensor([[30.0, 20.0, 70.0, 60.0], [0.0, 0.0, 10.0, 10.0]])], 16)
    assert crops.shape == (2, 3, 16, 16)
    assert (crops[0] == 255).all() and (crops[1] == 0).all()
