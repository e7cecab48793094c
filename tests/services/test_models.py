"""Weights from a file (state dict, TorchScript), by name with an offline fallback, random; the device functions."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.services.helpers import CLASSIFIER, CROP, DETECTOR, INPUT_SIZE, MAX_DETECTIONS
from visionpipe.services.classifier.stage import classifier_fn
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.models import RANDOM, load_model, save_random_weights
from visionpipe.settings import ClassifierSettings, DetectorSettings, ExecutorSettings


def test_state_dict_file_loads_exactly(weight_files: tuple[Path, Path]) -> None:
    _, cls_file = weight_files
    loaded = load_model("classification", CLASSIFIER, str(cls_file))
    saved = torch.load(cls_file, weights_only=True)
    assert loaded.weights == str(cls_file) and not loaded.is_random
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert loaded.categories is not None and loaded.label_name(0) == "tench"  # names from torchvision's metadata


def test_torchscript_file_loads(tmp_path: Path) -> None:
    path = save_random_weights("classification", CLASSIFIER, tmp_path / "cls.ts", scripted=True)
    loaded = load_model("classification", CLASSIFIER, str(path))
    assert loaded.scripted
    out = loaded.module(torch.zeros(1, 3, CROP, CROP))
    assert out.shape == (1, 1000)


def test_wrong_architecture_file_is_refused(weight_files: tuple[Path, Path]) -> None:
    det_file, _ = weight_files
    with pytest.raises(RuntimeError, match="state_dict"):
        load_model("classification", CLASSIFIER, str(det_file))


def test_unknown_model_and_weights_names() -> None:
    with pytest.raises(ValueError, match="unknown classification model"):
        load_model("classification", "no_such_net", RANDOM)
    with pytest.raises(ValueError, match="not one of"):
        load_model("classification", CLASSIFIER, "NO_SUCH_WEIGHTS")


def test_named_weights_fall_back_to_random_when_offline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    loaded = load_model("classification", CLASSIFIER, "DEFAULT")
    assert loaded.weights == RANDOM
    assert "FALLING BACK TO RANDOM" in caplog.text
    assert loaded.label_name(1) == "goldfish"


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


def test_classifier_fn_top_k() -> None:
    model = load_model("classification", CLASSIFIER, RANDOM)
    fn = classifier_fn(model, ClassifierSettings(top_k=3), ExecutorSettings(), "cpu")
    outputs = fn(torch.zeros(5, 3, CROP, CROP, dtype=torch.uint8))
    assert len(outputs) == 5
    scores, labels = outputs[0]
    assert scores.shape == (3,) and labels.shape == (3,)
    assert (scores[:-1] >= scores[1:]).all() and float(scores.sum()) <= 1.0 + 1e-5


@pytest.mark.parametrize(("w", "h"), [(640, 480), (300, 500), (1920, 1080)])
def test_boxes_map_back_to_original_pixels(w: int, h: int) -> None:
    """A white rectangle found in the letterboxed image maps back onto where it was drawn in the original."""
    from PIL import Image, ImageDraw

    from tests.services.helpers import fast_settings
    from visionpipe.services.decode.images import letterbox_cpu
    from visionpipe.services.detector.stage import DetectorStage
    from visionpipe.services.models import LoadedModel
    from visionpipe.services.samples import encode

    drawn = (w * 0.25, h * 0.4, w * 0.75, h * 0.9)
    img = Image.new("RGB", (w, h))
    ImageDraw.Draw(img).rectangle([round(v) for v in drawn], fill=(255, 255, 255))
    settings = fast_settings("geo", "memory://geo")
    letterboxed, geo = letterbox_cpu(encode(img, "PNG"), INPUT_SIZE, settings.limits, 0)
    ys, xs = np.nonzero(letterboxed[:, :, 0] > 128)
    found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]

    stage = DetectorStage(settings)
    stage.model = LoadedModel(torch.nn.Identity(), RANDOM, ["background", "thing"])
    payload = {"width": w, "height": h, "scale": geo.scale, "pad": geo.pad}
    (obj,) = stage._objects(np.array([found], dtype=np.float32), np.array([0.9]), np.array([1]), payload)
    tolerance = 1.5 / min(geo.scale)  # one letterbox pixel, in original pixels, plus resampling blur
    assert obj["box"] == pytest.approx(list(drawn), abs=tolerance)
    assert obj["label_name"] == "thing"
    # Boxes reaching into the padding are clipped to the image.
    (clipped,) = stage._objects(
        np.array([[-50, -50, 5000, 5000]], dtype=np.float32), np.array([0.5]), np.array([0]), payload
    )
    assert clipped["box"] == [0, 0, w, h]


@pytest.mark.parametrize(("explicit", "expect_boxes"), [(None, True), (0.3, False)])
def test_random_detector_keeps_top_boxes_unless_threshold_is_set(explicit: float | None, expect_boxes: bool) -> None:
    """Random weights score ~0.01: with no explicit threshold the stage keeps the top boxes, so the classifier runs."""
    from visionpipe.services.detector.stage import DetectorStage
    from visionpipe.settings import load_settings

    detector = {"model": DETECTOR, "max_detections": MAX_DETECTIONS, "crop_size": CROP, "score_threshold": explicit}
    stage = DetectorStage(load_settings(detector=detector, decode={"input_size": INPUT_SIZE}))
    fn = stage.build_fn(load_model("detection", DETECTOR, RANDOM), "cpu")
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8))
    ((boxes, _scores, _labels, _crops),) = fn(batch)
    assert (len(boxes) > 0) is expect_boxes
