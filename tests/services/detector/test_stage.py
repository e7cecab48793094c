"""The detector stage: boxes back in original pixels, and random weights that still hand the classifier boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.services.helpers import CROP, DETECTOR, INPUT_SIZE, MAX_DETECTIONS
from visionpipe.services.models.loading import RANDOM, load_model


@pytest.mark.parametrize(("w", "h"), [(640, 480), (300, 500), (1920, 1080)])
def test_boxes_map_back_to_original_pixels(w: int, h: int) -> None:
    """A white rectangle found in the letterboxed image maps back onto where it was drawn in the original."""
    from PIL import Image, ImageDraw

    from tests.services.helpers import fast_settings
    from visionpipe.hops import Letterboxed
    from visionpipe.samples import encode
    from visionpipe.services.decode.images import letterbox_cpu
    from visionpipe.services.detector.stage import DetectorStage
    from visionpipe.services.models.loading import LoadedModel

    drawn = (w * 0.25, h * 0.4, w * 0.75, h * 0.9)
    img = Image.new("RGB", (w, h))
    ImageDraw.Draw(img).rectangle([round(v) for v in drawn], fill=(255, 255, 255))
    settings = fast_settings("geo", "memory://geo")
    letterboxed, geo = letterbox_cpu(encode(img, "PNG"), INPUT_SIZE, settings.limits, 0)
    ys, xs = np.nonzero(letterboxed[:, :, 0] > 128)
    found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]

    stage = DetectorStage(settings)
    stage.model = LoadedModel(torch.nn.Identity(), RANDOM, ["background", "thing"])
    hop = Letterboxed(letterboxed, w, h, geo.scale, geo.pad)
    (obj,) = stage._objects(np.array([found], dtype=np.float32), np.array([0.9]), np.array([1]), hop)
    tolerance = 1.5 / min(geo.scale)  # one letterbox pixel, in original pixels, plus resampling blur
    assert obj.box == pytest.approx(drawn, abs=tolerance)
    assert obj.label_name == "thing"
    # Boxes reaching into the padding are clipped to the image.
    (clipped,) = stage._objects(
        np.array([[-50, -50, 5000, 5000]], dtype=np.float32), np.array([0.5]), np.array([0]), hop
    )
    assert clipped.box == (0, 0, w, h)


@pytest.mark.parametrize(("explicit", "expect_boxes"), [(None, True), (0.3, False)])
def test_random_detector_keeps_top_boxes_unless_threshold_is_set(explicit: float | None, expect_boxes: bool) -> None:
    """Random weights score ~0.01: with no explicit threshold the stage keeps the top boxes, so the classifier runs."""
    from visionpipe.services.detector.stage import DetectorStage
    from visionpipe.settings import load_settings

    detector = {"model": DETECTOR, "max_detections": MAX_DETECTIONS, "crop_size": CROP, "score_threshold": explicit}
    stage = DetectorStage(load_settings(detector=detector, decode={"input_size": INPUT_SIZE}))
    fn = stage.build_fn(load_model("detection", DETECTOR, RANDOM), "cpu")
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8))
    out = fn(batch)
    assert (int(out["count"][0]) > 0) is expect_boxes
