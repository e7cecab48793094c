"""Detector stage: letterboxed images in (``Letterboxed``), boxes in original pixels plus one crop per box out.

Each image is one executor request, so batches form across all messages in
flight, not only within one consumed batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from visionpipe.envelope import Envelope
from visionpipe.hops import DetectedObject, Detections, Letterboxed
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.models.loading import LoadedModel
from visionpipe.services.runtime.dnn_stage import DnnStage
from visionpipe.topology import DETECTOR

log = logging.getLogger(__name__)


class DetectorStage(DnnStage[Letterboxed]):
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

    def inputs(self, env: Envelope) -> tuple[Letterboxed, Sequence[npt.ArrayLike]]:
        decode = self.settings.decode
        hop = Letterboxed.read(env, decode.input_size)
        return hop, [hop.square_later(decode.input_size, decode.pad_value)]  # drawn as the executor fills its batch

    def output(self, env: Envelope, hop: Letterboxed, results: list[Any]) -> Envelope:
        assert self.model is not None, "start() first"
        (found,) = results
        n = int(found["count"])  # the device function pads every image to max_detections rows
        return Detections(
            width=hop.width,
            height=hop.height,
            objects=self._objects(found["boxes"][:n], found["scores"][:n], found["labels"][:n], hop),
            # A copy of the real rows: the rest is a view of the executor's pinned output buffer, which its next
            # batch on that slot reuses once nothing holds it, and this envelope may wait in a broker for a while.
            crops=found["crops"][:n].numpy().copy(),
            weights={"detector": self.model.weights},
            orientation=hop.orientation,
        ).write(env)

    def _objects(self, boxes: Any, scores: Any, labels: Any, hop: Letterboxed) -> list[DetectedObject]:
        """Boxes from letterbox pixels back to original pixels, clipped to the image."""
        assert self.model is not None
        (sx, sy), (px, py) = hop.scale, hop.pad
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        b[:, [0, 2]] = ((b[:, [0, 2]] - px) / sx).clip(0, hop.width)
        b[:, [1, 3]] = ((b[:, [1, 3]] - py) / sy).clip(0, hop.height)
        return [
            DetectedObject(
                box=(round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)),
                score=round(float(score), 5),
                label=int(label),
                label_name=self.model.label_name(int(label)),
            )
            for (x1, y1, x2, y2), score, label in zip(
                b.tolist(), np.asarray(scores).tolist(), np.asarray(labels).tolist(), strict=True
            )
        ]
