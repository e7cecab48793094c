"""What the deadline benchmark runs on: an H100 cost model per stage, the detector's fan-out, and the loads.

Cost models (each stage's own, all from H100 figures measured for this project, docs/background.md):

* decode: nvJPEG batched decode, 11,783 img/s at 640×480 (0.085 ms per image), the letterboxed 640² uint8
  image (1.2 MB) downloaded for the broker;
* detector: ``fcos_resnet50_fpn`` at 640², eager fp16, 276 img/s at batch 32 (116 ms a batch); the
  intercept (7.2 ms) and the eager launch (8 ms) are assumptions, the per-image slope follows from them;
* classifier: ResNet-50 on 224² uint8 crops, the executor benchmark's ``h100-uint8`` (launch-bound 5.6 ms flat,
  then 0.0725 ms per crop).

Broker hops are lognormal, fitted to the Redis hop measured here at 150 KB, 100 msg/s (p50 0.597 ms, p99
4.77 ms: benchmarks/RESULTS.md, "Broker hop").

Fan-out, crops per image, is 0–20 and heavy-tailed: P(k) ∝ (k + 1)^−α on 0…20, α solved for the mean (2
normally; 15 in the fan-out shift, where the weight piles up towards 20).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from visionpipe.executor.sim_device import COST_MODELS, CostModel, PhaseCost
from visionpipe.loadgen.bench.deadline_sim import Load, PipelineCost, StageCost
from visionpipe.loadgen.bench.traces import burst, poisson, ramp
from visionpipe.topology import CLASSIFIER, DECODE, DETECTOR

MAX_FANOUT = 20
FANOUT_MEAN = 2.0
SHIFT_FANOUT_MEAN = 15.0
SHIFT_LENGTH_S = 3.0
LOAD_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
BURST_LOAD = 0.8  # the burst doubles it: 160 % of capacity for 0.3 s
RAMP_LOW, RAMP_HIGH = 0.5, 1.1
SHIFT_LOAD = 0.8
DEADLINE_MS = 300.0
# Not one of the goals' loads: requests whose deadlines differ (a front door serves clients with different needs),
# where one backlog bound cannot suit them all.
MIXED_DEADLINES_MS = (150.0, 300.0, 600.0)
MIXED_LOAD = 1.0
# 52 GB/s pinned host->device (docs/background.md), a host memcpy at ~10 GB/s, ~20 µs per copy call.
_PINNED_GBPS, _HOST_GBPS, _COPY_BASE_MS = 52.0, 10.0, 0.02
_LETTERBOX_BYTES = 640 * 640 * 3
_JPEG_BYTES = 60_000
_CROPS_BYTES = 2 * 224 * 224 * 3  # the crops of a mean image, cut on the device and downloaded
HOP_MEDIAN_MS, HOP_P99_MS = 0.597, 4.771


def _copy(nbytes: int, gbps: float, base_ms: float = _COPY_BASE_MS) -> PhaseCost:
    return PhaseCost(per_item_ms=nbytes / (gbps * 1e9) * 1e3, base_ms=base_ms)


DECODE_COST = CostModel(
    "h100-nvjpeg",
    upload=_copy(_JPEG_BYTES, _PINNED_GBPS),
    upload_pageable=_copy(_JPEG_BYTES, 17.0),
    compute=PhaseCost(per_item_ms=1000 / 11_783, base_ms=0.3),
    download=_copy(_LETTERBOX_BYTES, _PINNED_GBPS),
    stage=_copy(_JPEG_BYTES, _HOST_GBPS, 0.0),
    launch=PhaseCost(0.0, 0.05),
)
DETECTOR_COST = CostModel(
    "h100-fcos640",
    upload=_copy(_LETTERBOX_BYTES, _PINNED_GBPS),
    upload_pageable=_copy(_LETTERBOX_BYTES, 17.0),
    compute=PhaseCost(per_item_ms=(116.0 - 7.2) / 32, base_ms=7.2),
    download=_copy(_CROPS_BYTES, _PINNED_GBPS),
    stage=_copy(_LETTERBOX_BYTES, _HOST_GBPS, 0.0),
    launch=PhaseCost(0.0, 8.0),
)


def h100_pipeline(noise: float = 0.03) -> PipelineCost:
    """Each stage's H100 cost with ``noise`` (relative jitter of every phase), max batch and executor SLO."""
    costs = {DECODE: DECODE_COST, DETECTOR: DETECTOR_COST, CLASSIFIER: COST_MODELS["h100-uint8"]}
    batches = {DECODE: 64, DETECTOR: 32, CLASSIFIER: 256}
    stages = {}
    for name, cost in costs.items():
        noisy = replace(cost, noise_cv=noise)
        # The SLO gives the policy its margin (5 %): twice a full batch, so the margin covers a batch's jitter.
        full_ms = sum(p.ms(batches[name]) for p in (cost.stage, cost.upload, cost.download)) + max(
            cost.compute.ms(batches[name]), cost.launch.ms(batches[name])
        )
        stages[name] = StageCost(noisy, batches[name], slo_ms=2 * full_ms)
    sigma = math.log(HOP_P99_MS / HOP_MEDIAN_MS) / 2.326  # z of the 99th percentile
    return PipelineCost("h100", stages, HOP_MEDIAN_MS, sigma)


def capacity(cost: PipelineCost, fanout_mean: float = FANOUT_MEAN) -> float:
    """Images per second the pipeline sustains at full batches: its slowest stage's."""
    rates = []
    for name, spec in cost.stages.items():
        c, b = spec.cost, spec.max_batch
        slowest = max(p.ms(b) for p in (c.stage, c.upload, c.compute, c.launch, c.download))
        per_image = fanout_mean if name == CLASSIFIER else 1.0
        rates.append(b / (slowest / 1e3) / per_image)
    return min(rates)


def fanout_pmf(mean: float, top: int = MAX_FANOUT) -> np.ndarray:
    """P(k) ∝ (k + 1)^−α on 0…top with the given mean (α < 0 for means past the middle)."""
    k = np.arange(top + 1)

    def mean_of(alpha: float) -> float:
        w = (k + 1.0) ** -alpha
        return float((k * w).sum() / w.sum())

    lo, hi = -10.0, 10.0  # mean_of falls as alpha grows
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_of(mid) > mean else (lo, mid)
    w = (k + 1.0) ** -((lo + hi) / 2)
    return w / w.sum()


def draw_fanout(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    return rng.choice(MAX_FANOUT + 1, size=n, p=fanout_pmf(mean)).astype(np.int64)


def _load(name: str, arrivals: np.ndarray, duration: float, seed: int, fraction: float = 0.0) -> Load:
    rng = np.random.default_rng(seed + 101)
    return Load(name, arrivals, draw_fanout(rng, len(arrivals), FANOUT_MEAN), DEADLINE_MS, duration, fraction)


def loads(cap: float, duration_s: float, seed: int, deadline_ms: float = DEADLINE_MS) -> list[Load]:
    """Poisson at each of LOAD_FRACTIONS, the burst, the ramp and the fan-out shift, all at ``deadline_ms``."""
    out = [
        _load(f"poisson-{round(f * 100)}%", poisson(f * cap, duration_s, seed).arrivals_ns, duration_s, seed, f)
        for f in LOAD_FRACTIONS
    ]
    out.append(_load("burst", burst(BURST_LOAD * cap, duration_s, seed).arrivals_ns, duration_s, seed, BURST_LOAD))
    out.append(_load("ramp", ramp(RAMP_LOW * cap, RAMP_HIGH * cap, duration_s, seed).arrivals_ns, duration_s, seed))
    out.append(fanout_shift(cap, duration_s, seed))
    for load in out:
        load.deadline_ms = deadline_ms
    out.append(mixed_deadlines(cap, duration_s, seed))
    return out


def mixed_deadlines(cap: float, duration_s: float, seed: int) -> Load:
    """Poisson at MIXED_LOAD, each request's deadline drawn from MIXED_DEADLINES_MS."""
    load = _load("mixed-deadlines", poisson(MIXED_LOAD * cap, duration_s, seed).arrivals_ns, duration_s, seed)
    rng = np.random.default_rng(seed + 303)
    load.deadline_ms = rng.choice(np.asarray(MIXED_DEADLINES_MS), size=len(load.arrivals_ns))
    load.offered_fraction = MIXED_LOAD
    return load


def fanout_shift(cap: float, duration_s: float, seed: int) -> Load:
    """Poisson at SHIFT_LOAD; crops per image jump from FANOUT_MEAN to SHIFT_FANOUT_MEAN for SHIFT_LENGTH_S."""
    load = _load("fanout-shift", poisson(SHIFT_LOAD * cap, duration_s, seed).arrivals_ns, duration_s, seed, SHIFT_LOAD)
    t0 = (duration_s - SHIFT_LENGTH_S) / 2
    inside = (load.arrivals_ns >= t0 * 1e9) & (load.arrivals_ns < (t0 + SHIFT_LENGTH_S) * 1e9)
    rng = np.random.default_rng(seed + 202)
    load.fanout[inside] = draw_fanout(rng, int(inside.sum()), SHIFT_FANOUT_MEAN)
    return load
