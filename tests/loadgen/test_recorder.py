"""Matching results to requests, percentiles, and what counts as lost."""

from __future__ import annotations

import pytest

from tests.stamps import MS, T0_WALL, stamped
from visionpipe.broker import DeadLetter
from visionpipe.loadgen.recorder import Recorder

T0_MONO = 5_000_000_000


def recorder() -> Recorder:
    return Recorder("r1", T0_WALL, T0_MONO)


def test_latency_is_from_the_scheduled_time_and_percentiles_come_from_the_histogram() -> None:
    rec = recorder()
    for i in range(100):
        rec.sent(f"r1-{i}", T0_MONO + i * MS)
    for i in range(100):
        # latency i+1 ms for request i: p50 ≈ 50 ms, p99 ≈ 99 ms, max 100 ms
        done = (2 * i + 1) * MS
        assert rec.on_result(stamped(f"r1-{i}", T0_WALL + i * MS), T0_MONO + done, T0_WALL + done)
    s = rec.summary(duration_s=1.0)
    assert (s["sent"], s["completed"], s["lost"], s["duplicates"], s["failed"]) == (100, 100, 0, 0, 0)
    lat = s["latency_ms"]
    assert lat["p50"] == pytest.approx(50, rel=0.01)
    assert lat["p99"] == pytest.approx(99, rel=0.01)
    assert lat["max"] == pytest.approx(100, rel=0.01)
    assert s["objects_per_image"] == 2
    assert s["weights"] == {"detector": "random"}
    assert s["cdf"][-1][1] == pytest.approx(1.0)


def test_duplicates_strays_dead_letters_and_losses_are_counted_apart() -> None:
    rec = recorder()
    for i in range(5):
        rec.sent(f"r1-{i}", T0_MONO)
    late = T0_MONO + 50 * MS, T0_WALL + 50 * MS
    assert rec.on_result(stamped("r1-0", T0_WALL), *late)
    assert not rec.on_result(stamped("r1-0", T0_WALL), *late)  # redelivered: a duplicate
    assert not rec.on_result(stamped("other-run-3", T0_WALL), *late)  # not ours: a stray
    letter = DeadLetter(reason="not an image", data=b"x", stage="decode", origin="vp.frames", request_id="r1-1")
    assert rec.on_dead_letter(letter)
    rec.rejected("r1-2", "backpressure")
    s = rec.summary(duration_s=1.0)
    assert s["completed"] == 1 and s["duplicates"] == 1 and s["strays"] == 1
    assert s["failed"] == 2  # the dead letter and the rejection: failed, not lost
    assert s["lost"] == 2  # r1-3 and r1-4 never came back
    assert rec.outstanding == 2


def test_non_dnn_share_is_everything_but_detector_and_classifier_compute() -> None:
    rec = recorder()
    rec.sent("r1-0", T0_MONO)
    rec.on_result(stamped("r1-0", T0_WALL), T0_MONO + 40 * MS, T0_WALL + 40 * MS)
    s = rec.summary(duration_s=1.0)
    assert s["non_dnn_share"] == pytest.approx((40 - 20) / 40)
    cats = s["categories_mean_ms"]
    assert cats["detector"] == pytest.approx(10) and cats["classifier"] == pytest.approx(10)
    assert sum(cats.values()) == pytest.approx(40)


def test_deadline_answers_and_late_results_are_counted_apart_from_failures_and_losses() -> None:
    from visionpipe.hops import Expiry

    rec = recorder()
    for i in range(4):
        rec.sent(f"r1-{i}", T0_MONO)
    on_time, late = stamped("r1-0", T0_WALL), stamped("r1-1", T0_WALL)
    on_time.deadline_ns = late.deadline_ns = T0_WALL + 50 * MS
    rec.on_result(on_time, T0_MONO + 40 * MS, T0_WALL + 40 * MS)
    rec.on_result(late, T0_MONO + 60 * MS, T0_WALL + 60 * MS)
    expired = stamped("r1-2", T0_WALL)
    assert rec.on_expired(expired, Expiry("detector", 12.0, "queue"))
    assert not rec.on_expired(expired, Expiry("detector", 12.0, "queue")), "a second answer is a duplicate"
    s = rec.summary(duration_s=1.0)
    assert (s["completed"], s["late"], s["deadline_exceeded"], s["failed"], s["lost"]) == (2, 1, 1, 0, 1)
    assert s["deadline_exceeded_by_stage"] == {"detector": 1} and s["duplicates"] == 1
