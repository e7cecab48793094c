"""On a GPU: the bundled pair in fp16 and channels_last gives the CPU's answers, and the detector never syncs.

Skipped without CUDA; written to run unchanged the moment a GPU is there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from visionpipe.samples import SAMPLES_DIR
from visionpipe.services.classifier.model import classifier_fn
from visionpipe.services.decode.images import letterbox_cpu
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.models.loading import load_model
from visionpipe.settings import Settings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PHOTOS = ("astronaut-512x512.jpg", "camera-512x512.jpg", "chelsea-451x300.jpg", "coffee-600x400.jpg")


def _batch(settings: Settings) -> torch.Tensor:
    images = [letterbox_cpu((SAMPLES_DIR / n).read_bytes(), 640, settings.limits, 114)[0] for n in PHOTOS]
    return torch.stack([torch.from_numpy(i) for i in images])


def test_fp16_channels_last_on_cuda_agrees_with_the_cpu(bundled_models: Path) -> None:
    settings = Settings(models={"cache_dir": bundled_models})
    batch = _batch(settings)
    out = {}
    for device in ("cpu", "cuda"):
        det = load_model("detection", "nanodet_g", "DEFAULT", bundled_models)
        cls = load_model("classification", "efficientnet_lite0", "DEFAULT", bundled_models)
        found = detector_fn(det, settings.detector, settings.executor, device)(batch.to(device))
        n = int(found["count"][0])
        top = classifier_fn(cls, settings.classifier, settings.executor, device)(found["crops"][0, :n])
        out[device] = (
            found["count"].cpu(),
            found["labels"][:, 0].cpu(),
            found["scores"][:, 0].cpu(),
            top["labels"][:, 0].cpu(),
        )
    cpu, cuda = out["cpu"], out["cuda"]
    assert torch.equal(cpu[0], cuda[0]) and torch.equal(cpu[1], cuda[1])  # same objects, same classes
    assert torch.allclose(cpu[2], cuda[2], atol=0.02)  # fp16 scores within 0.02
    assert torch.equal(cpu[3], cuda[3])  # same top-1 label for the first image's crops


def test_the_detector_never_syncs_with_the_host(bundled_models: Path) -> None:
    """With the real weights (boxes pass the threshold): no value or size reaches the host, all stays on the stream.

    The CPU-side guard (``tests/services/models/test_device_fns.py``) checks the same on the ``meta`` device.
    """
    settings = Settings(models={"cache_dir": bundled_models})
    det = load_model("detection", "nanodet_g", "DEFAULT", bundled_models)
    fn = detector_fn(det, settings.detector, settings.executor, "cuda")
    batch = _batch(settings).cuda()
    fn(batch)  # warm-up: lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert not syncs, [str(w.message) for w in syncs]
