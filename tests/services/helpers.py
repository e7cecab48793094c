"""Settings and inputs that keep the stage tests fast on a 2-core CPU.

Light models with random weights (saved to a file and loaded through the
real path), a small letterbox and small crops, a threshold of zero so that
random weights still yield boxes (capped) and the classifier has work.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from visionpipe.samples import scene, scene_jpeg
from visionpipe.settings import Settings, load_settings

DETECTOR = "ssdlite320_mobilenet_v3_large"
CLASSIFIER = "mobilenet_v3_small"
INPUT_SIZE = 320  # ssdlite resizes to 320 anyway; a smaller letterbox only saves decode and copy time
CROP = 64  # mobilenet pools adaptively, so 64² crops work and cost a twelfth of 224²
MAX_DETECTIONS = 2
TEST_MAX_PIXELS = 10_000_000


def fast_overrides(
    ns: str, url: str, detector_weights: str = "random", classifier_weights: str = "random"
) -> dict[str, Any]:
    return {
        "broker": {"url": url},
        "streams": {"prefix": ns},
        "decode": {"input_size": INPUT_SIZE, "batch": 4, "backend": "cpu"},
        "detector": {
            "model": DETECTOR,
            "weights": detector_weights,
            "score_threshold": 0.0,
            "max_detections": MAX_DETECTIONS,
            "crop_size": CROP,
            "messages_per_consume": 4,
        },
        "classifier": {"model": CLASSIFIER, "weights": classifier_weights, "top_k": 3, "messages_per_consume": 4},
        "executor": {"max_batch": 4, "warmup_repeats": 1, "slo_ms": 50.0},
        "limits": {"max_image_pixels": TEST_MAX_PIXELS},
        "service": {"device": "cpu", "drain_idle_s": 0.5, "reclaim_interval_s": 1.0, "port": 0},
        "gateway": {"grpc_port": 0},  # a gateway's gRPC on a free port: never the default one another run holds
    }


def fast_settings(ns: str, url: str, **kw: Any) -> Settings:
    return load_settings(**fast_overrides(ns, url, **kw))


def env_for(overrides: dict[str, Any]) -> dict[str, str]:
    """The same overrides as ``VISIONPIPE_SECTION__FIELD`` variables, for subprocesses."""
    out = {}
    for section, fields in overrides.items():
        for key, value in fields.items():
            out[f"VISIONPIPE_{section.upper()}__{key.upper()}"] = str(value)
    return out


def good_images() -> list[bytes]:
    """A 640x480 JPEG, a portrait JPEG, a PNG with alpha: the formats and shapes a user sends."""
    png = io.BytesIO()
    scene(200, 150, seed=7).convert("RGBA").save(png, format="PNG")
    return [scene_jpeg(640, 480, seed=1), scene_jpeg(300, 500, seed=2), png.getvalue()]


def bad_images() -> dict[str, bytes]:
    """One of each kind of poison, with the words its dead-letter reason must contain."""
    jpeg = scene_jpeg(640, 480, seed=3)
    big = io.BytesIO()
    Image.new("L", (4000, 3000)).save(big, format="PNG")  # 12 MP: over the tests' 10 MP limit, tiny as a file
    return {
        "empty": b"",
        "truncated": jpeg[: len(jpeg) // 3],
        "not an image": b"%PDF-1.4 this is not a picture" * 10,
        "pixels": big.getvalue(),
    }


def save_weights(folder: Path) -> tuple[Path, Path]:
    """Random detector and classifier weights as state-dict files, loaded by the stages through the real path."""
    from visionpipe.services.models.loading import save_random_weights

    det = save_random_weights("detection", DETECTOR, folder / "detector.pt")
    cls = save_random_weights("classification", CLASSIFIER, folder / "classifier.pt")
    return det, cls
