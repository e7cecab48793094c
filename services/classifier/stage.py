"""Classifier stage: crops in (``Detections``), top-k labels per box out (``Classified``), to the results stream.

Every crop of a message is its own executor request, so one frame with many
objects fills a batch as well as many frames with one object each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy.typing as npt
import torch

from visionpipe.envelope import Envelope
from visionpipe.hops import Classified, ClassifiedObject, Detections, TopK
from visionpipe.services.classifier.model import classifier_fn
from visionpipe.services.models.loading import LoadedModel
from visionpipe.services.runtime.dnn_stage import DnnStage
from visionpipe.topology import CLASSIFIER


class ClassifierStage(DnnStage[Detections]):
    name = CLASSIFIER
    kind = "classification"
    # A crop costs a fraction of a frame, and up to max_detections (20) come per frame: batches of 4 meant 5
    # device calls per frame, each paying the executor's thread hand-offs and a turn on the CPU.
    cpu_max_batch = 16

    @property
    def crop(self) -> int:
        return self.settings.detector.crop_size

    @property
    def model_spec(self) -> tuple[str, str]:
        return self.settings.classifier.model, self.settings.classifier.weights

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (3, self.crop, self.crop)

    def build_fn(self, model: LoadedModel, device: str) -> Callable[[torch.Tensor], Any]:
        return classifier_fn(model, self.settings.classifier, self.settings.executor, device)

    def requests_in(self, env: Envelope) -> int:
        objects = env.payload.get("objects")
        return len(objects) if isinstance(objects, list) else 1

    def inputs(self, env: Envelope) -> tuple[Detections, Sequence[npt.ArrayLike]]:
        hop = Detections.read(env, self.crop)
        return hop, list(hop.crops)

    def output(self, env: Envelope, hop: Detections, results: list[Any]) -> Envelope:
        assert self.model is not None, "start() first"
        label_name = self.model.label_name
        objects = [
            ClassifiedObject(
                **obj.model_dump(),
                top_k=[
                    TopK(label=int(label), name=label_name(int(label)), score=round(float(score), 5))
                    for score, label in zip(top["scores"].tolist(), top["labels"].tolist(), strict=True)
                ],
            )
            for obj, top in zip(hop.objects, results, strict=True)
        ]
        weights = {**hop.weights, "classifier": self.model.weights}
        return Classified(hop.width, hop.height, objects, weights, hop.orientation).write(env)
