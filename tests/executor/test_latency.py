"""The latency model: least squares that survives outliers, warm-up, flat regions and cost changes."""

from __future__ import annotations

import random

import pytest

from visionpipe.executor.latency import LatencyModel, Line, PhaseModel, fit_line


def test_exact_line_is_recovered() -> None:
    sizes = [1, 2, 4, 8, 16, 32]
    line = fit_line(sizes, [0.001 * b + 0.005 for b in sizes])
    assert line.k == pytest.approx(0.001) and line.c == pytest.approx(0.005)


def test_one_stalled_batch_does_not_tilt_the_fit() -> None:
    rng = random.Random(1)
    sizes = [rng.choice([1, 8, 16, 32]) for _ in range(40)]
    times = [(0.001 * b + 0.005) * rng.uniform(0.98, 1.02) for b in sizes]
    times[7] *= 10  # a stall: GC pause, another process on the GPU
    line = fit_line(sizes, times)
    assert line.k == pytest.approx(0.001, rel=0.1) and line.c == pytest.approx(0.005, rel=0.1)


def test_negative_slope_is_clamped_to_a_flat_line() -> None:
    # Launch-bound region: b1 slower than b64 (H100 ResNet-50 figures).
    line = fit_line([1, 8, 32, 64], [6.2e-3, 5.1e-3, 6.1e-3, 5.2e-3])
    assert line.k == 0.0 and line.c == pytest.approx(5.65e-3, rel=0.05)


def test_negative_intercept_is_clamped_through_the_origin() -> None:
    line = fit_line([10, 20, 40], [0.9e-3, 2.0e-3, 4.1e-3])
    assert line.c == 0.0 and line.k == pytest.approx(0.1e-3, rel=0.05)


def test_single_batch_size_keeps_the_prior_slope() -> None:
    line = fit_line([16] * 10, [0.021] * 10, prior_k=0.001)
    assert line.k == 0.001 and line(16) == pytest.approx(0.021)


def test_warmup_samples_are_skipped() -> None:
    model = PhaseModel(history=8, skip=2, refit_every=1)
    model.observe(8, 1.0)  # compile / autotune
    model.observe(8, 0.5)
    for b in (1, 8, 1, 8):
        model.observe(b, 0.001 * b + 0.002)
    assert model.line(8) == pytest.approx(0.010)


def test_model_refits_after_a_cost_change() -> None:
    model = LatencyModel(history=16, skip=0, refit_every=1)
    for i in range(32):
        b = (1, 16)[i % 2]
        model.observe(b, {"upload": 1e-4 * b, "compute": 0.001 * b + 0.002, "download": 1e-5})
    assert model.compute(16) == pytest.approx(0.018)
    for i in range(16):  # another process now shares the GPU: compute twice as slow
        b = (1, 16)[i % 2]
        model.observe(b, {"compute": 2 * (0.001 * b + 0.002)})
    assert model.compute(16) == pytest.approx(0.036, rel=0.02)
    assert model.upload(16) == pytest.approx(1.6e-3)


def test_bottleneck_and_ceiling() -> None:
    model = LatencyModel.from_lines({"upload": Line(0.5e-3, 0), "compute": Line(1e-3, 2e-3), "download": Line(0, 1e-4)})
    assert model.bottleneck(10, overlap=True) == pytest.approx(0.012)
    assert model.bottleneck(10, overlap=False) == pytest.approx(0.0171)
    assert model.ceiling(overlap=True) == pytest.approx(1000.0)
    assert model.ceiling(overlap=False) == pytest.approx(1 / 1.5e-3)
