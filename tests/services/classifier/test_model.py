"""The classifier's device function: normalised on the device, top-k per crop."""

from __future__ import annotations

import torch

from tests.services.helpers import CLASSIFIER, CROP
from visionpipe.services.classifier.model import classifier_fn, imagenet_input
from visionpipe.services.models.loading import RANDOM, load_model
from visionpipe.settings import ClassifierSettings, ExecutorSettings


def test_classifier_fn_top_k() -> None:
    model = load_model("classification", CLASSIFIER, RANDOM)
    fn = classifier_fn(model, ClassifierSettings(top_k=3), ExecutorSettings(), "cpu")
    out = fn(torch.zeros(5, 3, CROP, CROP, dtype=torch.uint8))
    assert out["scores"].shape == (5, 3) and out["labels"].shape == (5, 3)  # batched: the device-function contract
    scores = out["scores"][0]
    assert (scores[:-1] >= scores[1:]).all() and float(scores.sum()) <= 1.0 + 1e-5


def test_classifier_input_is_normalised_on_device() -> None:
    prepare = imagenet_input("cpu", channels_last=False)
    grey = torch.full((1, 3, 2, 2), 124, dtype=torch.uint8)  # ≈ ImageNet mean for the red channel
    out = prepare(grey).view(3, 4)
    assert abs(out[0].mean().item()) < 0.02 and out.dtype == torch.float32
