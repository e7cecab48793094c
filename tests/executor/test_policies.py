"""Deterministic policy tests: the real scheduler and policies on a virtual clock and a simulated device."""

from __future__ import annotations

import numpy as np
import pytest

from visionpipe.executor import (
    AdaptivePolicy,
    AimdPolicy,
    CostModel,
    FixedPolicy,
    LatencyModel,
    Line,
    PhaseCost,
    SimDevice,
    SlackPolicy,
    TimeoutPolicy,
    make_policy,
)
from visionpipe.executor.policy import keep_up_batch
from visionpipe.loadgen.bench.simulate import simulate
from visionpipe.loadgen.bench.traces import burst, poisson
from visionpipe.settings import ExecutorSettings

# A linear card (seed 001's shape): compute 1 ms/image + 4 ms per batch; upload 0.4 ms/image pinned, 1 pageable.
LINEAR = CostModel(
    "linear",
    upload=PhaseCost(0.4, 0.05),
    upload_pageable=PhaseCost(1.0, 0.05),
    compute=PhaseCost(1.0, 4.0),
    download=PhaseCost(0.01, 0.05),
)
LINES = {"upload": Line(0.4e-3, 0.05e-3), "compute": Line(1e-3, 4e-3), "download": Line(0.01e-3, 0.05e-3)}
MAX_BATCH = 64
SLO_MS = 200.0


def run(policy, trace, overlap=True, cost=LINEAR, **kw):  # type: ignore[no-untyped-def]
    return simulate(policy, cost, trace.arrivals_ns, overlap=overlap, max_batch=MAX_BATCH, slo_ms=SLO_MS, **kw)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(100.0, 1), (400.0, 3), (600.0, 6), (800.0, 16), (900.0, 36), (1000.0, MAX_BATCH), (5000.0, MAX_BATCH)],
)
def test_keep_up_batch_solves_seed_001(rate: float, expected: int) -> None:
    # overlapped: compute only, k·b + c ≤ b/λ  ⇔  b ≥ cλ/(1 − kλ)
    assert keep_up_batch(LatencyModel.from_lines(LINES), rate, overlap=True, max_batch=MAX_BATCH) == expected


def test_serial_keep_up_counts_every_phase() -> None:
    model = LatencyModel.from_lines(LINES)
    assert keep_up_batch(model, 600.0, overlap=False, max_batch=MAX_BATCH) > keep_up_batch(
        model, 600.0, overlap=True, max_batch=MAX_BATCH
    )


@pytest.mark.parametrize(("load", "lo", "hi"), [(0.2, 1, 2), (0.6, 3, 12), (0.85, 10, 40)])
def test_adaptive_batch_grows_with_load(load: float, lo: float, hi: float) -> None:
    rate = load * 1000.0  # the ceiling 1/k is 1000/s
    res = run(AdaptivePolicy(), poisson(rate, 2.0, seed=2))
    assert lo <= np.mean(res.batch_sizes) <= hi
    assert res.summary()["slo_attainment"] == 1.0


@pytest.mark.parametrize("policy", [AdaptivePolicy(), SlackPolicy(), FixedPolicy(32), FixedPolicy(MAX_BATCH)])
def test_no_request_held_past_its_deadline(policy) -> None:  # type: ignore[no-untyped-def]
    """Low load: a forming batch never fills, so the deadline alone must send it (noise-free model)."""
    res = run(policy, poisson(20.0, 3.0, seed=5))
    lat = res.latencies_ms
    assert len(lat) == len(res.arrivals_ns) and lat.max() <= SLO_MS


def test_slack_uses_less_gpu_per_request_than_greedy_within_slo() -> None:
    trace = poisson(300.0, 2.0, seed=4)
    greedy, slack = run(TimeoutPolicy(MAX_BATCH, 0.0), trace), run(SlackPolicy(), trace)
    assert slack.gpu_busy_s < 0.6 * greedy.gpu_busy_s
    assert slack.summary()["p99_ms"] <= SLO_MS


def test_timeout_zero_is_greedy_and_delay_waits() -> None:
    trace = poisson(50.0, 2.0, seed=6)  # sparse: the device is idle at most arrivals
    greedy = run(TimeoutPolicy(MAX_BATCH, 0.0), trace)
    delayed = run(TimeoutPolicy(MAX_BATCH, 30.0), trace)
    assert np.mean(greedy.batch_sizes) < 1.2 < np.mean(delayed.batch_sizes)
    assert np.median(delayed.latencies_ms) > np.median(greedy.latencies_ms) + 10


def test_burst_is_absorbed_and_batches_shrink_after() -> None:
    trace = burst(400.0, 1.5, seed=7)  # 40% load doubling to 80% for 0.3 s
    res = run(AdaptivePolicy(), trace)
    t0, t1 = trace.window_s or (0, 0)
    t = np.asarray(res.batch_dispatch_ns) / 1e9
    sizes = np.asarray(res.batch_sizes)
    during = sizes[(t >= t0 + 0.1) & (t < t1)].mean()
    before, after = sizes[t < t0].mean(), sizes[t > t1 + 0.3].mean()
    assert during > 1.5 * before and after < 0.7 * during
    assert res.summary()["slo_attainment"] == 1.0


def test_overlap_raises_capacity_over_serial() -> None:
    trace = poisson(3000.0, 1.0, seed=8)  # far past both ceilings: throughput is the device's
    ov = run(AdaptivePolicy(), trace, overlap=True).summary()["throughput"]
    se = run(AdaptivePolicy(), trace, overlap=False).summary()["throughput"]
    assert ov > 1.3 * se


def test_model_refits_after_a_cost_change() -> None:
    """Halfway through, compute becomes twice as slow (another process on the GPU): the model follows."""
    slow = CostModel("slow", LINEAR.upload, LINEAR.upload_pageable, PhaseCost(2.0, 8.0), LINEAR.download)
    model = LatencyModel.from_lines(LINES, history=32)
    trace = poisson(300.0, 1.0, seed=9)
    run(AdaptivePolicy(), trace, model=model)
    assert model.compute(10) == pytest.approx(0.014, rel=0.1)
    run(AdaptivePolicy(), trace, model=model, device=SimDevice(slow, MAX_BATCH))
    assert model.compute(10) == pytest.approx(0.028, rel=0.1)


def test_aimd_backs_off_when_batches_exceed_the_slo() -> None:
    policy = AimdPolicy(max_batch=MAX_BATCH, start=MAX_BATCH)
    trace = poisson(900.0, 1.0, seed=10)
    simulate(policy, LINEAR, trace.arrivals_ns, overlap=True, max_batch=MAX_BATCH, slo_ms=40.0)
    assert policy.cap < 40  # a batch of 40 computes for 44 ms: over the 40 ms SLO
    grow = AimdPolicy(max_batch=MAX_BATCH, start=1)
    run(grow, trace)
    assert grow.cap > 8


def test_simulation_is_deterministic() -> None:
    cost = CostModel("noisy", LINEAR.upload, LINEAR.upload_pageable, LINEAR.compute, LINEAR.download, noise_cv=0.05)
    trace = poisson(500.0, 1.0, seed=11)
    a, b = run(AdaptivePolicy(), trace, cost=cost, seed=3), run(AdaptivePolicy(), trace, cost=cost, seed=3)
    assert np.array_equal(a.done_ns, b.done_ns)


@pytest.mark.parametrize("name", ["adaptive", "slack", "fixed", "timeout", "aimd"])
def test_make_policy_by_setting(name: str) -> None:
    assert make_policy(ExecutorSettings(policy=name)).name == name  # type: ignore[arg-type]
