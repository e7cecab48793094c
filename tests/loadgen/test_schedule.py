"""Arrival schedules: counts, spacing and shape of each pattern, and the bounds that keep runs finite."""

from __future__ import annotations

import itertools
import statistics

import pytest

from visionpipe.loadgen.schedule import MAX_REQUESTS, LoadSpec, ScheduleError, send_times


def test_constant_is_evenly_spaced_and_fills_the_duration() -> None:
    times = send_times(LoadSpec("constant", rate=20, duration_s=3))
    assert len(times) == 60
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {0.05}
    assert times[0] == 0 and times[-1] < 3


def test_poisson_has_the_mean_rate_exponential_gaps_and_is_seeded() -> None:
    spec = LoadSpec("poisson", rate=200, duration_s=20, seed=7)
    times = send_times(spec)
    assert send_times(spec) == times
    assert send_times(LoadSpec("poisson", rate=200, duration_s=20, seed=8)) != times
    assert abs(len(times) - 4000) < 4 * 4000**0.5  # within 4 sigma of the Poisson mean
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Exponential gaps: standard deviation equals the mean (a constant schedule would have ~0).
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.1)


def test_burst_sends_faster_during_the_burst_window() -> None:
    spec = LoadSpec("burst", rate=100, duration_s=4, burst_factor=3, burst_ms=250)
    times = send_times(spec)
    in_burst = sum(1 for t in times if t % 1.0 < 0.25)
    outside = len(times) - in_burst
    assert in_burst / (0.25 * 4) == pytest.approx(300, rel=0.05)  # per-second rate inside the bursts
    assert outside / (0.75 * 4) == pytest.approx(100, rel=0.05)
    assert len(times) == pytest.approx(spec.expected_requests(), rel=0.02)


def test_ramp_rises_linearly_to_the_rate() -> None:
    times = send_times(LoadSpec("ramp", rate=100, duration_s=10))
    assert len(times) == 500
    first_half = sum(1 for t in times if t < 5)
    assert first_half == pytest.approx(125, abs=2)  # a quarter of the area under a linear ramp
    last_second = sum(1 for t in times if t >= 9)
    assert last_second == pytest.approx(95, abs=2)  # mean rate over [9, 10] is 95/s


@pytest.mark.parametrize(
    "spec",
    [
        LoadSpec("constant", rate=0, duration_s=1),
        LoadSpec("constant", rate=10, duration_s=0),
        LoadSpec("constant", rate=float("inf"), duration_s=1),
        LoadSpec("burst", rate=10, duration_s=1, burst_factor=0.5),
        LoadSpec("burst", rate=10, duration_s=1, burst_ms=2000),
        LoadSpec("constant", rate=MAX_REQUESTS, duration_s=2),
        LoadSpec("closed", duration_s=1, concurrency=0),
    ],
)
def test_impossible_or_unbounded_loads_are_refused(spec: LoadSpec) -> None:
    with pytest.raises(ScheduleError):
        spec.validate()


def test_closed_loop_has_no_schedule() -> None:
    with pytest.raises(ScheduleError, match="closed loop"):
        send_times(LoadSpec("closed", duration_s=1, concurrency=2))
