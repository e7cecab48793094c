"""The arrival-rate estimate: follows Poisson load, decays when arrivals stop, counts the broker backlog."""

from __future__ import annotations

import pytest

from visionpipe.executor.rate import BACKLOG_DRAIN_S, RateEstimator
from visionpipe.loadgen.bench.traces import poisson

NS = 1_000_000_000


@pytest.mark.parametrize("rate", [50.0, 1_000.0, 20_000.0])
def test_poisson_rate_within_window_error(rate: float) -> None:
    est = RateEstimator()
    trace = poisson(rate, duration_s=max(2.0, 500 / rate), seed=3)
    errors = []
    for i, t in enumerate(trace.arrivals_ns.tolist()):
        est.arrive(t)
        if i > 100 and i % 50 == 0:
            errors.append(abs(est.rate(t) - rate) / rate)
    assert sum(errors) / len(errors) < 0.15


def test_rate_decays_when_arrivals_stop() -> None:
    est = RateEstimator()
    for i in range(100):
        est.arrive(i * NS // 1000)  # 1000/s for 0.1 s
    assert est.rate(99 * NS // 1000) == pytest.approx(1000, rel=0.02)
    assert est.rate(NS) < 150  # 0.9 s of silence


def test_rate_follows_a_step_within_the_window() -> None:
    est = RateEstimator()
    t = 0
    for _ in range(500):
        t += NS // 100
        est.arrive(t)
    for _ in range(200):
        t += NS // 1000
        est.arrive(t)
    assert est.rate(t) == pytest.approx(1000, rel=0.05)


def test_backlog_adds_the_rate_needed_to_drain_it() -> None:
    est = RateEstimator()
    est.observe_backlog(500)
    assert est.rate(0) == pytest.approx(500 / BACKLOG_DRAIN_S)
    est.observe_backlog(0)
    assert est.rate(0) == 0.0


def test_a_consumed_batch_arriving_at_once_is_not_read_as_a_rate_per_microsecond() -> None:
    """A stage submits a whole consume (8 messages × 8 crops) in one event-loop pass: 64 arrivals µs apart."""
    est = RateEstimator()
    t = 0
    for _ in range(64):
        est.arrive(t)
        t += 2_000  # 2 µs apart
    assert est.rate(t) == 0.0  # one consume says nothing about the rate yet
    for _ in range(5):  # then one consume of 64 every 50 ms: 1280 requests/s
        t += 50 * NS // 1000
        for _ in range(64):
            est.arrive(t)
    assert est.rate(t) == pytest.approx(1280, rel=0.05)


def test_arrivals_may_be_counted_in_bulk() -> None:
    est = RateEstimator()
    for i in range(10):
        est.arrive(i * NS // 100, n=4)  # 4 crops per message, 100 messages/s
    assert est.rate(9 * NS // 100) == pytest.approx(400, rel=0.02)
