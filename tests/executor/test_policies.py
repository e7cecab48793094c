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

# A linear card (a discrete GPU's shape): compute 1 ms/image + 4 ms per batch; upload 0.4 ms/image pinned, 1 pageable.
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


def test_keep_up_takes_each_streams_own_slope_and_intercept() -> None:
    """Transfer-bound (upload 0.05 ms/image, compute 0.01 ms/image + 1 ms): upload's own k and c set the batch."""
    lines = {"upload": Line(0.05e-3, 0.0), "compute": Line(0.01e-3, 1e-3), "download": Line(0.0, 0.0)}
    model = LatencyModel.from_lines(lines)
    rate = 15_000.0
    # compute keeps up at b ≥ 1e-3·λ/(1 − 1e-5·λ) = 17.6; upload (c = 0) at any b while 0.05e-3·λ < 1
    assert keep_up_batch(model, rate, overlap=True, max_batch=256) == 18
    assert model.ceiling(overlap=True) == pytest.approx(1 / 0.05e-3)  # the steepest stream, not compute
    assert keep_up_batch(model, 25_000.0, overlap=True, max_batch=256) == 256  # past upload's ceiling


def test_slo_batch_is_the_largest_batch_meeting_the_slo() -> None:
    from visionpipe.executor.policy import slo_batch

    model = LatencyModel.from_lines(LINES)
    for rate in (100.0, 500.0, 900.0):
        b = slo_batch(model, rate, 0.2)
        assert b / rate + model.total(b) == pytest.approx(0.2)  # L(b) = b/λ + t(b) = S exactly at the bound
    assert slo_batch(model, 900.0, 0.003) < 1  # no batch meets a 3 ms SLO: the fixed costs alone are 4.1 ms


def test_busy_adaptive_never_sends_more_than_the_oldest_deadline_allows() -> None:
    """A backlog of 60: sending all would finish past the oldest's deadline; the policy sends what fits, ≥ keep-up."""
    from visionpipe.executor.policy import QueueView

    model = LatencyModel.from_lines(LINES)
    ms = 1_000_000
    view = QueueView(
        now_ns=0,
        queued=60,
        oldest_arrival_ns=-150 * ms,
        earliest_deadline_ns=50 * ms,
        rate=300.0,
        model=model,
        max_batch=MAX_BATCH,
        overlap=True,
        compute_free_ns=5 * ms,
        slo_ns=200 * ms,
    )
    n = AdaptivePolicy().decide(view).dispatch
    fits = view.largest_on_time(60)
    assert 0 < fits < 60 and n == max(fits, keep_up_batch(model, 300.0, True, MAX_BATCH))
    assert view.done_ns(n, 0) <= 50 * ms - 10 * ms  # within the deadline, less the 5% margin
    late = QueueView(**{**{f: getattr(view, f) for f in view.__dataclass_fields__}, "earliest_deadline_ns": 0})
    assert AdaptivePolicy().decide(late).dispatch == 60  # already late: drain as fast as the device can


def test_adaptive_flags_a_load_no_batch_can_serve_within_the_slo() -> None:
    policy = AdaptivePolicy()
    simulate(policy, LINEAR, poisson(950.0, 0.5, seed=1).arrivals_ns, overlap=True, max_batch=MAX_BATCH, slo_ms=20.0)
    assert policy.slo_feasible is False  # keep-up at 95% of 1/k needs ~80 images: 80 ms of compute > 20 ms


def test_serial_pinned_sits_between_pageable_and_overlapped() -> None:
    trace = poisson(3000.0, 0.5, seed=8)
    got = {
        mech: run(TimeoutPolicy(MAX_BATCH, 0.0), trace, overlap=ov, pinned=pin).summary()["throughput"]
        for mech, ov, pin in (("ov", True, True), ("pinned", False, True), ("pageable", False, False))
    }
    assert got["pageable"] < got["pinned"] < got["ov"]


def test_a_launch_bound_batch_computes_no_faster_than_its_launch() -> None:
    cost = CostModel(
        "launchy", PhaseCost(0.0), PhaseCost(0.0), PhaseCost(0.01, 0.2), PhaseCost(0.0), launch=PhaseCost(0.0, 5.0)
    )
    for overlap in (True, False):
        batch = SimDevice(cost, max_batch=8, overlap=overlap).schedule(8, 0)
        assert batch.compute_end - batch.upload_end >= 5_000_000
        assert batch.timings()["launch"] == pytest.approx(5e-3)


def test_keep_up_batch_grows_when_the_launcher_is_the_bottleneck() -> None:
    """Overlapped, the launcher thread is a stream of its own: 5 ms per batch at 1000 req/s needs b ≥ 5."""
    lines = {"compute": Line(0.0, 1e-3), "launch": Line(0.0, 5e-3)}
    model = LatencyModel.from_lines(lines)
    assert keep_up_batch(model, 1000.0, overlap=True, max_batch=64) == 5
    assert keep_up_batch(LatencyModel.from_lines({"compute": Line(0.0, 1e-3)}), 1000.0, True, 64) == 1
