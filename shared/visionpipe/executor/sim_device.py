"""A simulated device: a linear (or floored) cost per phase and the occupancy of each stream.

Used two ways: by the discrete-event simulator (``visionpipe.loadgen.bench.simulate``:
``schedule`` on a virtual clock — deterministic and fast, for policy tests and the benchmark), and as
a ``Device`` for the asyncio executor (``launch``/``collect`` on the real
monotonic clock, sleeping for the modelled time), so the executor's API can
be exercised without torch or a GPU.

Cost models come from measurements: H100 ResNet-50 figures
(eager fp16 forward: flat ≈5.5 ms up to b≈64, then ≈0.0725 ms per image;
host→device 52 GB/s pinned, ≈17 GB/s pageable) and a GTX 1080 Ti-like card
(upload ≈14% of compute).

Besides the three device phases a batch costs the host two things, each a
resource of its own: ``stage``, the copy of the items into the batch buffer
(pinned or pageable: a memcpy either way), and ``launch``, the time the
launcher thread spends enqueueing the model's kernels. The GPU runs kernels
as they are enqueued, so a compute phase ends no earlier than its launch
does: an eager model whose launch takes longer than its kernels is
launch-bound, and only CUDA graphs (one launch) take that cost away.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from visionpipe.executor.device import Device

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class PhaseCost:
    """``max(floor, per_item·b + base)`` milliseconds: launch-bound GPUs are flat until the floor is passed."""

    per_item_ms: float
    base_ms: float = 0.0
    floor_ms: float = 0.0

    def ms(self, b: int) -> float:
        return max(self.floor_ms, self.per_item_ms * b + self.base_ms)


@dataclass(frozen=True, slots=True)
class CostModel:
    name: str
    upload: PhaseCost  # pinned host buffer, copy engine
    upload_pageable: PhaseCost  # what a plain server pays: the driver bounces pageable memory through its own buffer
    compute: PhaseCost  # the GPU's own time for the kernels
    download: PhaseCost
    noise_cv: float = 0.0  # relative standard deviation of each phase time (lognormal-ish multiplier)
    stage: PhaseCost = PhaseCost(0.0)  # host memcpy of the items into the batch buffer
    launch: PhaseCost = PhaseCost(0.0)  # host time to enqueue the model's kernels (eager); ends before compute can


def _copy(bytes_per_item: int, gb_per_s: float, base_ms: float) -> PhaseCost:
    return PhaseCost(per_item_ms=bytes_per_item / (gb_per_s * 1e9) * 1e3, base_ms=base_ms)


_RESNET_FP32_BYTES = 3 * 224 * 224 * 4
_RESNET_U8_BYTES = 3 * 224 * 224
_LOGITS_BYTES = 1000 * 4
# A copy call costs ~10-30 us before any byte moves (driver + DMA setup).
_COPY_BASE_MS = 0.02
# One host thread copies ~10 GB/s between cached buffers (an assumption until `make gpu-check` measures the stage
# phase on the lent machine); a batch's staging copy pays it whether the destination is pinned or not.
_HOST_MEMCPY_GBPS = 10.0
# H100 ResNet-50 eager fp16: b1 6.2, b8 5.1, b32 6.1, b64 5.2, b128 9.7, b256 18.5 ms: past b≈64 the
# kernels cost ≈0.0725 ms per image; below, the ~5.6 ms is the host launching ~160 kernels for about 1 ms of math.
_H100_COMPUTE = PhaseCost(per_item_ms=0.0725, base_ms=0.0, floor_ms=1.0)
_H100_LAUNCH = PhaseCost(per_item_ms=0.0, base_ms=5.6)
_H100_PINNED_GBPS, _H100_PAGEABLE_GBPS = 52.0, 17.0

COST_MODELS: dict[str, CostModel] = {
    # Preprocessed float32 tensors, as a plain PyTorch server ships them: pageable upload ≈ 49% of compute.
    "h100": CostModel(
        "h100",
        upload=_copy(_RESNET_FP32_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        upload_pageable=_copy(_RESNET_FP32_BYTES, _H100_PAGEABLE_GBPS, _COPY_BASE_MS),
        compute=_H100_COMPUTE,
        download=_copy(_LOGITS_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        stage=_copy(_RESNET_FP32_BYTES, _HOST_MEMCPY_GBPS, 0.0),
        launch=_H100_LAUNCH,
    ),
    # uint8 images, normalised on the GPU inside fn: a quarter of the bytes, pageable upload ≈ 12% of compute.
    "h100-uint8": CostModel(
        "h100-uint8",
        upload=_copy(_RESNET_U8_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        upload_pageable=_copy(_RESNET_U8_BYTES, _H100_PAGEABLE_GBPS, _COPY_BASE_MS),
        compute=_H100_COMPUTE,
        download=_copy(_LOGITS_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        stage=_copy(_RESNET_U8_BYTES, _HOST_MEMCPY_GBPS, 0.0),
        launch=_H100_LAUNCH,
    ),
    # h100-uint8 with the eager launch replaced by one CUDA-graph replay (~50 µs of host time): what
    # `executor.cuda_graphs` should make of it. A projection: the kernels' own ~1 ms at b1 is an estimate,
    # and `make gpu-check` measures batch-1 latency with and without graphs on the lent machine.
    "h100-graphs": CostModel(
        "h100-graphs",
        upload=_copy(_RESNET_U8_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        upload_pageable=_copy(_RESNET_U8_BYTES, _H100_PAGEABLE_GBPS, _COPY_BASE_MS),
        compute=_H100_COMPUTE,
        download=_copy(_LOGITS_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        stage=_copy(_RESNET_U8_BYTES, _HOST_MEMCPY_GBPS, 0.0),
        launch=PhaseCost(per_item_ms=0.0, base_ms=0.05),
    ),
    # GTX 1080 Ti, ResNet-50 fp32: ≈ 1.25 ms/image past a 2.5 ms launch floor;
    # the pageable upload ≈ 14% of compute, pinned over PCIe 3 about twice as fast.
    "gtx1080ti": CostModel(
        "gtx1080ti",
        upload=PhaseCost(per_item_ms=0.0875, base_ms=0.03),
        upload_pageable=PhaseCost(per_item_ms=0.175, base_ms=0.05),
        compute=PhaseCost(per_item_ms=1.25, base_ms=2.5),
        download=PhaseCost(per_item_ms=0.002, base_ms=0.03),
        stage=_copy(_RESNET_FP32_BYTES, _HOST_MEMCPY_GBPS, 0.0),
        # Eager launch of ResNet-50 is a few ms of host time: on this card the kernels take longer, so it never binds.
        launch=PhaseCost(per_item_ms=0.0, base_ms=2.5),
    ),
}


def cost_model(name: str, noise_cv: float | None = None) -> CostModel:
    try:
        model = COST_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown cost model {name!r}: one of {', '.join(COST_MODELS)}") from None
    return model if noise_cv is None else replace(model, noise_cv=noise_cv)


@dataclass(frozen=True, slots=True)
class SimBatch:
    """Stream occupancy of one simulated batch (ns on whichever clock drove ``schedule``)."""

    size: int
    stage_start: int
    upload_start: int
    upload_end: int
    compute_start: int
    compute_end: int
    download_end: int
    items: Sequence[Any] = ()
    launch_ns: int = 0

    def timings(self) -> dict[str, float]:
        return {
            "stage": (self.upload_start - self.stage_start) / NS,
            "upload": (self.upload_end - self.upload_start) / NS,
            "compute": (self.compute_end - self.compute_start) / NS,
            "download": (self.download_end - self.compute_end) / NS,
            "launch": self.launch_ns / NS,
        }


class SimDevice(Device):
    """Host staging, upload, launch, compute and download resources whose busy-until times follow a ``CostModel``.

    ``overlap``: each its own resource (a stager thread, copy engines, a launcher thread, the compute
    stream); serially all in one line, the upload from pinned memory when ``pinned`` else pageable.
    """

    name = "sim"

    def __init__(
        self, cost: CostModel, max_batch: int = 32, overlap: bool = True, seed: int = 0, pinned: bool = True
    ) -> None:
        self.cost = cost
        self.max_batch = max_batch
        self.overlap = overlap
        self.pinned = pinned or overlap
        self.busy_s = 0.0  # total compute-stream time: the "GPU busy" of the benchmark
        self._rng = random.Random(seed)
        self._free = dict.fromkeys(("stage", "upload", "launch", "compute", "download"), 0)
        self._lock = threading.Lock()

    def _ns(self, phase: PhaseCost, b: int) -> int:
        ms = phase.ms(b)
        if ms > 0 and self.cost.noise_cv > 0:
            ms *= max(0.05, self._rng.gauss(1.0, self.cost.noise_cv))
        return int(ms * 1e6)

    def schedule(self, n: int, at_ns: int, items: Sequence[Any] = ()) -> SimBatch:
        """Book a batch of ``n`` handed over at ``at_ns``; returns when each phase starts and ends."""
        c = self.cost
        st, la = self._ns(c.stage, n), self._ns(c.launch, n)
        up = self._ns(c.upload if self.pinned else c.upload_pageable, n)
        comp, down = self._ns(c.compute, n), self._ns(c.download, n)
        free = self._free
        if self.overlap:
            st0 = max(at_ns, free["stage"])
            up0 = max(st0 + st, free["upload"])
            la0 = max(st0 + st, free["launch"])  # the launcher queues fn once the upload it waits for is queued
            comp0 = max(up0 + up, free["compute"], la0)
            comp1 = max(comp0 + comp, la0 + la)
            down1 = max(comp1, free["download"]) + down
            free.update(stage=st0 + st, upload=up0 + up, launch=la0 + la, compute=comp1, download=down1)
        else:  # one stream: everything in order, nothing overlaps
            st0 = max(at_ns, free["compute"])
            up0 = st0 + st
            comp0 = up0 + up
            comp1 = comp0 + max(comp, la)
            down1 = comp1 + down
            free.update(dict.fromkeys(free, down1))
        self.busy_s += (comp1 - comp0) / NS
        return SimBatch(n, st0, up0, up0 + up, comp0, comp1, down1, items, la)

    # Device interface on the real clock: sleeps stand in for the GPU.
    def launch(self, items: Sequence[Any]) -> SimBatch:
        with self._lock:
            return self.schedule(len(items), time.monotonic_ns(), items)

    def collect(self, handle: SimBatch) -> tuple[list[Any], dict[str, float]]:
        wait_ns = handle.download_end - time.monotonic_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / NS)
        return list(handle.items), handle.timings()

    def example_item(self) -> Any:
        return 0
