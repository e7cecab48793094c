"""A simulated device: a linear (or floored) cost per phase and the occupancy of each stream.

Used two ways: by the discrete-event simulator (``visionpipe.loadgen.bench.simulate``:
``schedule`` on a virtual clock — deterministic and fast, for policy tests and the benchmark), and as
a ``Device`` for the asyncio executor (``launch``/``collect`` on the real
monotonic clock, sleeping for the modelled time), so the executor's API can
be exercised without torch or a GPU.

Cost models come from measurements: the H100 ResNet-50 figures of issue 4
(eager fp16 forward: flat ≈5.5 ms up to b≈64, then ≈0.0725 ms per image;
host→device 52 GB/s pinned, ≈17 GB/s pageable) and a GTX 1080 Ti-like card
(seed 001's; upload ≈14% of compute).
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
    upload_pageable: PhaseCost  # what a plain server pays: a staging copy through pageable memory
    compute: PhaseCost
    download: PhaseCost
    noise_cv: float = 0.0  # relative standard deviation of each phase time (lognormal-ish multiplier)


def _copy(bytes_per_item: int, gb_per_s: float, base_ms: float) -> PhaseCost:
    return PhaseCost(per_item_ms=bytes_per_item / (gb_per_s * 1e9) * 1e3, base_ms=base_ms)


_RESNET_FP32_BYTES = 3 * 224 * 224 * 4
_RESNET_U8_BYTES = 3 * 224 * 224
_LOGITS_BYTES = 1000 * 4
# A copy call costs ~10-30 us before any byte moves (driver + DMA setup).
_COPY_BASE_MS = 0.02
# H100 ResNet-50 eager fp16: b1 6.2, b8 5.1, b32 6.1, b64 5.2, b128 9.7, b256 18.5 ms (issue 4).
_H100_COMPUTE = PhaseCost(per_item_ms=0.0725, base_ms=0.0, floor_ms=5.6)
_H100_PINNED_GBPS, _H100_PAGEABLE_GBPS = 52.0, 17.0

COST_MODELS: dict[str, CostModel] = {
    # Preprocessed float32 tensors, as a plain PyTorch server ships them: pageable upload ≈ 49% of compute.
    "h100": CostModel(
        "h100",
        upload=_copy(_RESNET_FP32_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        upload_pageable=_copy(_RESNET_FP32_BYTES, _H100_PAGEABLE_GBPS, _COPY_BASE_MS),
        compute=_H100_COMPUTE,
        download=_copy(_LOGITS_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
    ),
    # uint8 images, normalised on the GPU inside fn: a quarter of the bytes, pageable upload ≈ 12% of compute.
    "h100-uint8": CostModel(
        "h100-uint8",
        upload=_copy(_RESNET_U8_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
        upload_pageable=_copy(_RESNET_U8_BYTES, _H100_PAGEABLE_GBPS, _COPY_BASE_MS),
        compute=_H100_COMPUTE,
        download=_copy(_LOGITS_BYTES, _H100_PINNED_GBPS, _COPY_BASE_MS),
    ),
    # GTX 1080 Ti, ResNet-50 fp32 (seed 001's card): ≈ 1.25 ms/image past a 2.5 ms launch floor;
    # the pageable upload ≈ 14% of compute (seed 001), pinned over PCIe 3 about twice as fast.
    "gtx1080ti": CostModel(
        "gtx1080ti",
        upload=PhaseCost(per_item_ms=0.0875, base_ms=0.03),
        upload_pageable=PhaseCost(per_item_ms=0.175, base_ms=0.05),
        compute=PhaseCost(per_item_ms=1.25, base_ms=2.5),
        download=PhaseCost(per_item_ms=0.002, base_ms=0.03),
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
    upload_start: int
    upload_end: int
    compute_start: int
    compute_end: int
    download_end: int
    items: Sequence[Any] = ()

    def timings(self) -> dict[str, float]:
        return {
            "upload": (self.upload_end - self.upload_start) / NS,
            "compute": (self.compute_end - self.compute_start) / NS,
            "download": (self.download_end - self.compute_end) / NS,
        }


class SimDevice(Device):
    """Three streams (or one, serially) whose busy-until times follow a ``CostModel``."""

    name = "sim"

    def __init__(self, cost: CostModel, max_batch: int = 32, overlap: bool = True, seed: int = 0) -> None:
        self.cost = cost
        self.max_batch = max_batch
        self.overlap = overlap
        self.busy_s = 0.0  # total compute-stream time: the "GPU busy" of the benchmark
        self._rng = random.Random(seed)
        self._free = {"upload": 0, "compute": 0, "download": 0}
        self._lock = threading.Lock()

    def _ns(self, phase: PhaseCost, b: int) -> int:
        ms = phase.ms(b)
        if self.cost.noise_cv > 0:
            ms *= max(0.05, self._rng.gauss(1.0, self.cost.noise_cv))
        return int(ms * 1e6)

    def schedule(self, n: int, at_ns: int, items: Sequence[Any] = ()) -> SimBatch:
        """Book a batch of ``n`` handed over at ``at_ns``; returns when each phase starts and ends."""
        c = self.cost
        up = self._ns(c.upload if self.overlap else c.upload_pageable, n)
        comp = self._ns(c.compute, n)
        down = self._ns(c.download, n)
        free = self._free
        if self.overlap:
            up_start = max(at_ns, free["upload"])
            comp_start = max(up_start + up, free["compute"])
            down_start = max(comp_start + comp, free["download"])
            free["upload"], free["compute"], free["download"] = up_start + up, comp_start + comp, down_start + down
        else:  # one stream: everything in order, nothing overlaps
            up_start = max(at_ns, free["compute"])
            comp_start = up_start + up
            down_start = comp_start + comp
            free["upload"] = free["compute"] = free["download"] = down_start + down
        self.busy_s += comp / NS
        return SimBatch(n, up_start, up_start + up, comp_start, comp_start + comp, down_start + down, items)

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
