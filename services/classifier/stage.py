"""Classifier stage: crops in, top-k labels per box out, written to the results stream.

Every crop of a message is its own executor request, so one frame with many
objects fills a batch as well as many frames with one object each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from visionpipe.envelope import Envelope, Event
from visionpipe.services.classifier.model import classifier_fn
from visionpipe.services.dnn_stage import DnnStage
from visionpipe.services.stage import BadInput, Outcome
from visionpipe.services.weights import LoadedModel
from visionpipe.topology import CLASSIFIER


class ClassifierStage(DnnStage):
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

    async def _one(self, env: Envelope) -> Outcome:
        try:
            crops, objects = self._validate(env)
        except BadInput as exc:
            return exc
        assert self.executor is not None and self.model is not None, "start() first"
        start = time.time_ns()
        try:
            tops = await asyncio.gather(*(self.submit(crop) for crop in crops))
        except Exception as exc:  # transient: left for redelivery by the worker
            return exc
        done = time.time_ns()
        results = []
        for obj, top in zip(objects, tops, strict=True):
            top_k = [
                {"label": int(label), "name": self.model.label_name(int(label)), "score": round(float(score), 5)}
                for score, label in zip(top["scores"].tolist(), top["labels"].tolist(), strict=True)
            ]
            results.append({**obj, "top_k": top_k})
        weights = dict(env.payload.get("weights") or {})
        weights["classifier"] = self.model.weights
        out = env.child(width=env.payload["width"], height=env.payload["height"], objects=results, weights=weights)
        out.stamp(self.name, Event.BATCH_START, start)
        out.stamp(self.name, Event.COMPUTE_DONE, done)
        return out

    def _validate(self, env: Envelope) -> tuple[np.ndarray, list[dict[str, Any]]]:
        crops = env.arrays.get("crops")
        objects = env.payload.get("objects")
        if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
            raise BadInput("classifier input has no list of objects")
        if not isinstance(env.payload.get("width"), int) or not isinstance(env.payload.get("height"), int):
            raise BadInput("classifier input has no image width/height")
        want = (len(objects), 3, self.crop, self.crop)
        if crops is None or crops.dtype != np.uint8 or crops.shape != want:
            got = "none" if crops is None else f"{crops.dtype}{list(crops.shape)}"
            raise BadInput(f"classifier needs uint8 crops of shape {list(want)} (one per object), got {got}")
        return crops, objects
