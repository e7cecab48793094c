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
from visionpipe.ingress import CLASSIFIER
from visionpipe.services.dnn_stage import DnnStage
from visionpipe.services.models import LoadedModel
from visionpipe.services.worker import BadInput, Outcome
from visionpipe.settings import ClassifierSettings, ExecutorSettings

# torchvision's ImageNet classifiers are trained on inputs normalised with these per-channel statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classifier_fn(
    model: LoadedModel, settings: ClassifierSettings, executor: ExecutorSettings, device: str
) -> Callable[[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """``fn(batch)`` for the executor: (b, 3, C, C) uint8 crops -> per crop (top-k scores, top-k labels)."""
    module = model.module.to(device)
    cuda = device.startswith("cuda")
    if cuda and executor.channels_last and not model.scripted:
        module = module.to(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    autocast_dtype = getattr(torch, executor.dtype)

    @torch.inference_mode()
    def fn(batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = (batch.float().div_(255.0) - mean) / std
        if cuda and executor.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=autocast_dtype, enabled=cuda and autocast_dtype != torch.float32):
            logits = module(x)
        probs = logits.float().softmax(dim=1)
        top = probs.topk(min(settings.top_k, probs.shape[1]), dim=1)
        return list(zip(top.values, top.indices, strict=True))

    return fn


class ClassifierStage(DnnStage):
    name = CLASSIFIER
    kind = "classification"

    @property
    def crop(self) -> int:
        return self.settings.detector.crop_size

    @property
    def model_spec(self) -> tuple[str, str]:
        return self.settings.classifier.model, self.settings.classifier.weights

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (3, self.crop, self.crop)

    def build_fn(self, model: LoadedModel, device: str) -> Callable[[torch.Tensor], list[Any]]:
        return classifier_fn(model, self.settings.classifier, self.settings.executor, device)

    async def _one(self, env: Envelope) -> Outcome:
        try:
            crops, objects = self._validate(env)
        except BadInput as exc:
            return exc
        assert self.executor is not None and self.model is not None, "start() first"
        start = time.time_ns()
        try:
            tops = await asyncio.gather(*(self.executor.submit(crop) for crop in crops))
        except Exception as exc:  # transient: left for redelivery by the worker
            return exc
        done = time.time_ns()
        results = []
        for obj, (scores, labels) in zip(objects, tops, strict=True):
            top_k = [
                {"label": int(label), "name": self.model.label_name(int(label)), "score": round(float(score), 5)}
                for score, label in zip(np.asarray(scores).tolist(), np.asarray(labels).tolist(), strict=True)
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
