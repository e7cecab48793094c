"""Accuracy smoke tests: the bundled models with their real weights on the shipped photographs.

Through the stages' own device functions and default settings (letterbox 640, NanoDet at 416,
threshold 0.43, square 1.2x crops), so what passes here is what `visionpipe run` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from visionpipe.samples import SAMPLES_DIR
from visionpipe.services.classifier.model import classifier_fn
from visionpipe.services.decode.images import letterbox_cpu
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.models.loading import load_model
from visionpipe.settings import Settings

Found = list[tuple[str, float, list[str]]]  # per object: label, score, classifier top-5 names
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module")
def pipeline(bundled_models: Path) -> Callable[[str], Found]:
    settings = Settings(models={"cache_dir": bundled_models})
    det = load_model("detection", settings.detector.model, "DEFAULT", bundled_models)
    cls = load_model("classification", settings.classifier.model, "DEFAULT", bundled_models)
    detect = detector_fn(det, settings.detector, settings.executor, "cpu")
    classify = classifier_fn(cls, settings.classifier, settings.executor, "cpu")

    def run(name: str) -> Found:
        image, _ = letterbox_cpu((SAMPLES_DIR / name).read_bytes(), 640, settings.limits, settings.decode.pad_value)
        out = detect(torch.from_numpy(image)[None])
        n = int(out["count"][0])
        if n == 0:
            return []
        top = classify(out["crops"][0, :n])
        return [
            (
                det.label_name(int(out["labels"][0, i])),
                float(out["scores"][0, i]),
                [cls.label_name(int(j)) for j in top["labels"][i]],
            )
            for i in range(n)
        ]

    return run


@pytest.mark.parametrize("name", ["astronaut-512x512.jpg", "camera-512x512.jpg"])
def test_a_person_is_found_on_each_portrait(pipeline: Callable[[str], Found], name: str) -> None:
    label, score, _ = pipeline(name)[0]
    assert label == "person" and score >= 0.6


def test_the_cat_is_a_cat_to_both_models(pipeline: Callable[[str], Found]) -> None:
    label, score, top5 = pipeline("chelsea-451x300.jpg")[0]
    assert label == "cat" and score >= 0.4
    assert top5[0] in CATS and len(CATS & set(top5)) >= 2


def test_the_photographer_has_a_tripod_and_the_coffee_is_espresso(pipeline: Callable[[str], Found]) -> None:
    assert pipeline("camera-512x512.jpg")[0][2][0] == "tripod"
    (_, _, top5), *_ = pipeline("coffee-600x400.jpg")
    assert top5[0] == "espresso" and "cup" in top5
