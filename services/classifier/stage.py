"""Classifier stage: crops in, top-k labels per box out, written to the results stream.

Every crop of a message is its own executor request, so one frame with many
objects fills a batch as well as many frames with one object each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import torch

from visionpipe.envelope import Envelope, Event
from visionpipe.ingress import CLASSIFIER
from visionpipe.metrics import Metrics
from visionpipe.services.executors import StageExecutor
from visionpipe.services.models import LoadedModel, load_model, resolve_device
from visionpipe.services.worker import BadInput, Outcome, Stage
from visionpipe.settings import ClassifierSettings, ExecutorSettings, Settings

log = logging.getLogger(__name__)

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


class ClassifierStage(Stage):
    name = CLASSIFIER

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.crop = settings.detector.crop_size
        self.model: LoadedModel | None = None
        self.executor: StageExecutor | None = None

    async def start(self) -> None:
        s = self.settings
        device = resolve_device(s.service.device)
        model = await asyncio.to_thread(load_model, "classification", s.classifier.model, s.classifier.weights)
        self.model = model
        fn = classifier_fn(model, s.classifier, s.executor, device)
        self.executor = StageExecutor(fn, (3, self.crop, self.crop), s.executor, device, self._on_batch)
        await self.executor.start()
        log.info("classifier %s (%s weights) on %s", s.classifier.model, model.weights, device)

    def _on_batch(self, size: int, timings: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.device_batch.labels(self.name).observe(size)

    @property
    def ready(self) -> bool:
        return self.executor is not None

    @property
    def weights(self) -> str | None:
        return self.model.weights if self.model is not None else None

    def observe_backlog(self, backlog: int) -> None:
        if self.executor is not None:
            self.executor.observe_backlog(backlog)

    async def stop(self) -> None:
        if self.executor is not None:
            await self.executor.stop()

    async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        return list(await asyncio.gather(*self.items(envelopes)))

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        return [self._one(env) for env in envelopes]

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
