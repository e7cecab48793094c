"""Detector stage: letterboxed images in, boxes in original pixels plus one crop per box out.

Each image is one executor request, so batches form across all messages in
flight, not only within one consumed batch. ``batch_start`` is stamped when
the image is handed to the executor and ``compute_done`` when its result is
back on the host, so the detector's share includes time spent in a forming
batch — the executor's own wait, which the latency split counts as compute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from visionpipe.envelope import Envelope, Event
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.dnn_stage import DnnStage
from visionpipe.services.stage import BadInput, Outcome
from visionpipe.services.weights import LoadedModel
from visionpipe.topology import DETECTOR

log = logging.getLogger(__name__)


class DetectorStage(DnnStage):
    name = DETECTOR
    kind = "detection"

    @property
    def model_spec(self) -> tuple[str, str]:
        return self.settings.detector.model, self.settings.detector.weights

    @property
    def item_shape(self) -> tuple[int, ...]:
        size = self.settings.decode.input_size
        return (size, size, 3)

    def build_fn(self, model: LoadedModel, device: str) -> Callable[[torch.Tensor], Any]:
        detector = self.settings.detector
        if model.is_random and "score_threshold" not in detector.model_fields_set:
            # Random weights score ~0.01, so the default threshold would hand the classifier nothing and an
            # offline `visionpipe run` would never exercise it; the scores mean nothing either way. Keep the top
            # max_detections instead; a threshold that was set explicitly is always honoured.
            log.warning(
                "detector has random weights and no explicit score threshold: keeping the top %d boxes",
                detector.max_detections,
            )
            detector = detector.model_copy(update={"score_threshold": 0.0})
        return detector_fn(model, detector, self.settings.executor, device)

    async def _one(self, env: Envelope) -> Outcome:
        try:
            image, geo = self._validate(env)
        except BadInput as exc:
            return exc
        assert self.executor is not None and self.model is not None, "start() first"
        start = time.time_ns()
        try:
            found = await self.submit(image)
        except Exception as exc:  # transient (device, executor); the worker leaves it for redelivery
            return exc
        done = time.time_ns()
        n = int(found["count"])  # the device function pads every image to max_detections rows
        out = env.child(
            width=geo["width"],
            height=geo["height"],
            objects=self._objects(found["boxes"][:n], found["scores"][:n], found["labels"][:n], geo),
            weights={"detector": self.model.weights},
        )
        # A copy of the real rows: the rest is a view of the executor's pinned output buffer, which its next batch
        # on that slot reuses once nothing holds it, and this envelope may wait in a broker for a while.
        out.arrays["crops"] = found["crops"][:n].numpy().copy()
        out.stamp(self.name, Event.BATCH_START, start)
        out.stamp(self.name, Event.COMPUTE_DONE, done)
        return out

    def _validate(self, env: Envelope) -> tuple[np.ndarray, dict[str, Any]]:
        image = env.arrays.get("image")
        want = self.item_shape
        if image is None or image.dtype != np.uint8 or image.shape != want:
            got = "none" if image is None else f"{image.dtype}{list(image.shape)}"
            raise BadInput(f"detector needs a uint8 image of shape {list(want)}, got {got}")
        p = env.payload
        try:
            width, height = int(p["width"]), int(p["height"])
            scale = (float(p["scale"][0]), float(p["scale"][1]))
            pad = (float(p["pad"][0]), float(p["pad"][1]))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BadInput(f"detector input lacks letterbox geometry: {type(exc).__name__}: {exc}") from None
        if width <= 0 or height <= 0 or min(scale) <= 0:
            raise BadInput("detector input has an empty image or zero scale")
        return image, {"width": width, "height": height, "scale": scale, "pad": pad}

    def _objects(self, boxes: Any, scores: Any, labels: Any, geo: dict[str, Any]) -> list[dict[str, Any]]:
        """Boxes from letterbox pixels back to original pixels, clipped to the image."""
        assert self.model is not None
        (sx, sy), (px, py) = geo["scale"], geo["pad"]
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        b[:, [0, 2]] = ((b[:, [0, 2]] - px) / sx).clip(0, geo["width"])
        b[:, [1, 3]] = ((b[:, [1, 3]] - py) / sy).clip(0, geo["height"])
        objects = []
        for box, score, label in zip(b.tolist(), np.asarray(scores).tolist(), np.asarray(labels).tolist(), strict=True):
            objects.append(
                {
                    "box": [round(v, 2) for v in box],
                    "score": round(float(score), 5),
                    "label": int(label),
                    "label_name": self.model.label_name(int(label)),
                }
            )
        return objects
