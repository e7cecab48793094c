"""Stage-level side-by-sides for ``make gpu-check``: each stage against the raw library call it wraps.

* batch-1 latency of a ResNet-50-class model through the executor's device,
  eager vs replayed from a CUDA graph (vs ``torch.compile`` when asked);
* the decode stage (nvJPEG on a GPU, Pillow on the CPU) vs raw batched
  ``torchvision.io.decode_jpeg`` on the same files and batch size;
* the classifier stage kept saturated (every crop of many messages in flight)
  vs back-to-back raw forwards of the same function at the same batch size.

Each returns a plain dict for the report; times are the best of a few passes
(other jobs only ever slow a pass down), latencies are percentiles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from visionpipe.envelope import Envelope
from visionpipe.executor.cuda_graphs import CudaGraphFn
from visionpipe.executor.torch_device import TorchDevice
from visionpipe.settings import ClassifierSettings, DetectorSettings, ExecutorSettings, load_settings

PASSES = 3
# Crops per message in the saturation run: a frame with a handful of objects.
CROPS_PER_MESSAGE = 8


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def _b1(fn: Callable[[torch.Tensor], Any], shape: tuple[int, ...], device: str, runs: int) -> dict[str, Any]:
    dev = TorchDevice(fn, shape, max_batch=1, device=device, overlap=True)
    dev.warmup([1], 1)  # captures the graphs when fn is graphed
    item = dev.example_item()
    wall, compute = [], []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        _, timings = dev.run([item])
        wall.append((time.perf_counter_ns() - t0) / 1e6)
        compute.append(timings["compute"] * 1e3)
    return {"request": _percentiles(wall), "compute": _percentiles(compute)}


def batch1_latency(model: str, device: str, runs: int, with_compile: bool = False) -> dict[str, Any]:
    """Batch-1 latency through ``TorchDevice`` (stage, upload, compute, download): eager vs CUDA graphs."""
    from visionpipe.services.classifier.model import classifier_fn
    from visionpipe.services.models.loading import RANDOM, load_model

    cuda = device.startswith("cuda")
    size = 224 if cuda else 64
    fn = classifier_fn(load_model("classification", model, RANDOM), ClassifierSettings(), ExecutorSettings(), device)
    shape = (3, size, size)
    out: dict[str, Any] = {"model": f"{model} (random weights, the classifier stage's fn, uint8 {shape})"}
    out["eager"] = _b1(fn, shape, device, runs)
    if cuda:
        out["cuda_graphs"] = _b1(CudaGraphFn(fn, (1,)), shape, device, runs)
        if with_compile:
            compiled = torch.compile(fn, dynamic=False)
            out["compile"] = _b1(compiled, shape, device, runs)
            out["compile_and_graphs"] = _b1(CudaGraphFn(compiled, (1,)), shape, device, runs)
        eager, graphed = out["eager"]["request"]["p50_ms"], out["cuda_graphs"]["request"]["p50_ms"]
        out["graphs_speedup"] = round(eager / graphed, 3) if graphed else None
    return out


def _best_rate(call: Callable[[list[bytes]], Any], images: list[bytes], batch: int) -> float:
    call(images[:batch])  # warm-up: thread pools, CUDA context, nvJPEG handles
    best = 0.0
    for _ in range(PASSES):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            call(images[i : i + batch])
        best = max(best, len(images) / (time.perf_counter() - start))
    return best


def decode_vs_raw(images: list[bytes], device: str, batch: int) -> dict[str, Any]:
    """The decode stage (envelopes in, letterboxed tensors out) vs the same work done raw on the same bytes.

    Raw is batched ``decode_jpeg`` plus the letterbox and the one download the nvJPEG decoder does
    (``letterbox_batch``): the ratio is the stage's own cost (header checks, envelopes, its threads). On the
    CPU the stage decodes with Pillow and raw with torchvision: a smoke test, not a ratio to read.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    from visionpipe.services.decode.backends import letterbox_batch
    from visionpipe.services.decode.stage import DecodeStage

    cuda = device.startswith("cuda")
    backend = "nvjpeg" if cuda else "cpu"
    settings = load_settings(decode={"backend": backend, "batch": batch}, service={"device": device})
    stage = DecodeStage(settings)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(stage.start())

        def through_stage(chunk: list[bytes]) -> Any:
            envs = [Envelope(f"r{i}", payload={"image": b}) for i, b in enumerate(chunk)]
            return loop.run_until_complete(stage.process(envs))

        def raw(chunk: list[bytes]) -> Any:
            # The stage's own work without the stage: batched decode, the letterbox on the device and one copy
            # back into pinned memory (letterbox_batch, which the nvJPEG decoder calls), nothing else.
            datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in chunk]
            decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
            return letterbox_batch(decoded, settings.decode.input_size, settings.decode.pad_value)

        stage_rate = _best_rate(through_stage, images, batch)
        raw_rate = _best_rate(raw, images, batch)
    finally:
        loop.run_until_complete(stage.stop())
        loop.close()
    return {
        "backend": stage.backend,
        "batch": batch,
        "images": len(images),
        "stage_img_s": round(stage_rate, 1),
        "raw_img_s": round(raw_rate, 1),
        "stage_over_raw": round(stage_rate / raw_rate, 3),
    }


def classifier_saturation(device: str, max_batch: int, batches: int) -> dict[str, Any]:
    """The classifier stage with every crop of many messages in flight vs raw back-to-back forwards of its fn."""
    from visionpipe.services.classifier.stage import ClassifierStage
    from visionpipe.services.models.loading import RANDOM

    crop = DetectorSettings().crop_size if device.startswith("cuda") else 64
    settings = load_settings(
        executor={"max_batch": max_batch},
        detector={"crop_size": crop},
        classifier={"weights": RANDOM},
        service={"device": device},
    )
    stage = ClassifierStage(settings)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (CROPS_PER_MESSAGE, 3, crop, crop), dtype=np.uint8)
    n_msgs = max(1, batches * max_batch // CROPS_PER_MESSAGE)
    objects = [{"box": [0, 0, 1, 1], "score": 1.0, "label": 1, "label_name": "x"}] * CROPS_PER_MESSAGE

    async def drive() -> tuple[float, float]:
        await stage.start()
        assert stage.executor is not None and stage.model is not None
        try:
            envs = [
                Envelope(f"m{i}", payload={"objects": objects, "width": 640, "height": 480}, arrays={"crops": crops})
                for i in range(n_msgs)
            ]
            await asyncio.gather(*stage.items(envs[: max(1, n_msgs // 8)]))  # warm: allocator, pinned pool
            start = time.perf_counter()
            outs = await asyncio.gather(*stage.items(envs))
            elapsed = time.perf_counter() - start
            assert all(isinstance(o, Envelope) for o in outs), [o for o in outs if not isinstance(o, Envelope)][:1]
            device_of_stage = stage.executor.device
            assert isinstance(device_of_stage, TorchDevice)
            fn = device_of_stage.fn
            from visionpipe.loadgen.bench.executor_live import raw_throughput

            raw = raw_throughput(fn, (3, crop, crop), max_batch, device)
            return n_msgs * CROPS_PER_MESSAGE / elapsed, raw
        finally:
            await stage.stop()

    stage_rate, raw_rate = asyncio.run(drive())
    return {
        "model": f"{settings.classifier.model} (random weights), crops {crop}²",
        "max_batch": max_batch,
        "crops": n_msgs * CROPS_PER_MESSAGE,
        "stage_crops_s": round(stage_rate, 1),
        f"raw_b{max_batch}_forward_crops_s": round(raw_rate, 1),
        "stage_over_raw": round(stage_rate / raw_rate, 3),
    }
