"""Every shipped device function keeps the no-host-sync contract on its GPU path, checked on a CPU.

Each is built through its stage's own code for the ``meta`` device and run once under the host-sync guard
(``visionpipe.executor.sync_guard``): NanoDet-g and torchvision's SSD behind the detector, EfficientNet-Lite0
behind the classifier. A constant built from host data inside a call fails here, not in the GPU run.
"""

from __future__ import annotations

import pytest
import torch

from visionpipe.executor.sync_guard import HostSyncError, check_device_fn
from visionpipe.services.classifier.model import classifier_fn
from visionpipe.services.detector import model as detector_model
from visionpipe.services.models import nanodet
from visionpipe.services.models.loading import RANDOM, load_model
from visionpipe.settings import Settings

SETTINGS = Settings()
SIZE = SETTINGS.decode.input_size


def _detector(model: str) -> detector_model.DetectorFn:
    settings = SETTINGS.detector.model_copy(update={"model": model})
    return detector_model.detector_fn(load_model("detection", model, RANDOM), settings, SETTINGS.executor, "meta")


@pytest.mark.parametrize("model", ["nanodet_g", "ssdlite320_mobilenet_v3_large"])
def test_the_detector_function_never_syncs_with_the_host(model: str) -> None:
    batch = torch.zeros((2, SIZE, SIZE, 3), dtype=torch.uint8, device="meta")
    out = check_device_fn(_detector(model), batch)
    d = SETTINGS.detector.max_detections
    assert out["boxes"].shape == (2, d, 4) and out["count"].shape == (2,)
    assert out["crops"].shape[:2] == (2, d)


def test_the_classifier_function_never_syncs_with_the_host() -> None:
    fn = classifier_fn(
        load_model("classification", SETTINGS.classifier.model, RANDOM), SETTINGS.classifier, SETTINGS.executor, "meta"
    )
    crop = SETTINGS.detector.crop_size
    out = check_device_fn(fn, torch.zeros((3, 3, crop, crop), dtype=torch.uint8, device="meta"))
    assert out["labels"].shape == (3, SETTINGS.classifier.top_k)


def test_a_constant_built_from_host_data_inside_the_detector_fails_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: NanoDet's normalisation built with ``x.new_tensor`` on every call, as it once was."""

    def per_call_constants(images: torch.Tensor, size: int) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        x = x.flip(1)
        return (x - x.new_tensor(nanodet.MEAN_BGR).view(1, 3, 1, 1)) / x.new_tensor(nanodet.STD_BGR).view(1, 3, 1, 1)

    monkeypatch.setattr(detector_model, "prepare", per_call_constants)
    batch = torch.zeros((1, SIZE, SIZE, 3), dtype=torch.uint8, device="meta")
    with pytest.raises(HostSyncError, match="new_tensor"):
        check_device_fn(_detector("nanodet_g"), batch)


def test_input_constants_are_built_once_per_device() -> None:
    first = nanodet.input_constants("cpu")
    assert nanodet.input_constants(torch.device("cpu"))[0] is first[0]
    assert first[0].shape == (1, 3, 1, 1)
    torch.testing.assert_close(first[1].flatten(), torch.tensor(nanodet.STD_BGR))
