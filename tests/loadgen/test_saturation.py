"""Saturation: a run the pipeline could not keep up with is told apart from one that is merely slow."""

from __future__ import annotations

from collections.abc import Callable

from tests.stamps import MS, T0_WALL, stamped
from visionpipe.loadgen.recorder import Recorder
from visionpipe.loadgen.saturation import saturation

T0_MONO = 5_000_000_000


def run_summary(n: int, every_ms: int, done_at_ms: Callable[[int], int], duration_s: float) -> dict[str, object]:
    """``n`` requests sent every ``every_ms``; request i's result read at ``done_at_ms(i)`` from the start."""
    rec = Recorder("r", T0_WALL, T0_MONO)
    for i in range(n):
        rec.sent(f"r-{i}", T0_MONO + i * every_ms * MS)
    for i in range(n):
        done = done_at_ms(i) * MS
        rec.on_result(stamped(f"r-{i}", T0_WALL + i * every_ms * MS), T0_MONO + done, T0_WALL + done)
    return rec.summary(duration_s)


def test_a_pipeline_that_keeps_up_is_not_saturated_however_slow_each_request() -> None:
    # 5 req/s for 10 s, each request 3 s: slow, but results come back as fast as requests go in.
    assert saturation(run_summary(50, 200, lambda i: i * 200 + 3000, 10.0)) is None
    assert saturation(run_summary(50, 200, lambda i: i * 200 + 40, 10.0)) is None


def test_a_queue_that_grows_is_saturated_and_says_by_how_much() -> None:
    # 5 req/s offered, the pipeline serves one a second: latency 0.5 + 0.8·i s, growing all run long (medians of
    # the thirds: requests 0-15 and 34-49).
    found = saturation(run_summary(50, 200, lambda i: 500 + i * 1000, 10.0))
    assert found is not None
    assert found["achieved_rps"] == 1.0 and found["offered_rps"] == 5.0
    assert "results came back at 1.00 req/s, 5.00 offered (20.0%)" in found["why"]
    assert "latency rose from 6.5 s in the first third of the run to 33.7 s in the last" in found["why"]


def test_a_closed_loop_is_judged_by_its_latency_only() -> None:
    # A closed loop sends as results return, so its offered rate is what came back: only growth can show.
    flat = run_summary(50, 200, lambda i: i * 200 + 100, 10.0)
    flat["offered_rps"] = 50.0
    assert saturation(flat, open_loop=False) is None
    assert saturation(flat, open_loop=True) is not None
