"""The scheduler's mechanics: the two-stream gate, the serial gate, earliest-deadline order."""

from __future__ import annotations

import pytest

from visionpipe.executor import LatencyModel, Line, Scheduler, TimeoutPolicy

MS = 1_000_000
LINES = {"upload": Line(0.5e-3, 0.0), "compute": Line(1e-3, 4e-3), "download": Line(0.0, 0.1e-3)}


def make(overlap: bool) -> Scheduler:
    return Scheduler(
        TimeoutPolicy(64, 0.0), LatencyModel.from_lines(LINES), max_batch=64, overlap=overlap, slo_ns=100 * MS
    )


def test_overlapped_gate_times_the_upload_to_end_with_compute() -> None:
    s = make(overlap=True)
    for i in range(10):  # 1000 req/s
        s.add(i * MS)
    batch = s.take(9 * MS, 10)  # upload 5 ms, compute 14 ms: compute busy until 28 ms
    assert batch.compute_end_est_ns == 28 * MS
    for i in range(10, 14):
        s.add(i * MS)
    gate = s.gate_ns(13 * MS)
    # By the gate g about 4 + (g − 13 ms)·1000/s requests are queued; their upload ends at 28 ms: g ≈ 21.7 ms.
    assert gate is not None and 20 * MS <= gate <= 24 * MS
    assert s.next_action(13 * MS).dispatch == 0
    # No one else came: the gate moved to 28 ms minus the upload of the 4 queued (2 ms).
    assert s.next_action(25 * MS).dispatch == 0
    assert s.next_action(26 * MS).dispatch == 4


def test_serial_gate_waits_for_the_batch_to_come_back() -> None:
    s = make(overlap=False)
    s.add(0)
    batch = s.take(0, 1)
    s.add(1 * MS)
    assert s.gate_ns(1 * MS) is None and s.next_action(1 * MS).dispatch == 0
    s.complete(batch, 6 * MS, {"upload": 5e-4, "compute": 5e-3, "download": 1e-4})
    assert s.next_action(6 * MS).dispatch == 1


def test_earliest_deadline_leaves_first() -> None:
    s = make(overlap=True)
    late = s.add(0, "late", deadline_ns=90 * MS)
    early = s.add(1 * MS, "early", deadline_ns=10 * MS)
    batch = s.take(2 * MS, 1)
    assert batch.requests == [early] and len(s) == 1 and late.payload == "late"


def test_completion_reports_latencies_and_frees_the_device() -> None:
    s = make(overlap=True)
    s.add(0)
    s.add(2 * MS)
    batch = s.take(3 * MS, 2)
    latencies = s.complete(batch, 10 * MS, {"compute": 6e-3})
    assert latencies == [10 * MS, 8 * MS] and s.in_flight == 0 and s.compute_free_ns <= 10 * MS


def test_booking_follows_the_real_compute_end() -> None:
    """A batch that computed longer than predicted delays the one behind it: the gate must move too."""
    s = make(overlap=True)
    s.add(0)
    a = s.take(0, 1)  # upload 0.5 ms, compute 5 ms: predicted end 5.5 ms
    s.add(1 * MS)
    b = s.take(1 * MS, 1)  # behind a: predicted end 10.5 ms
    assert (a.compute_end_est_ns, b.compute_end_est_ns, s.compute_free_ns) == (5.5 * MS, 10.5 * MS, 10.5 * MS)
    # a really computed until 8.5 ms (3 ms late), then 0.1 ms of download
    s.complete(a, int(8.6 * MS), {"upload": 5e-4, "compute": 8e-3, "download": 1e-4})
    assert b.compute_end_est_ns == 13.5 * MS and s.compute_free_ns == 13.5 * MS
    s.complete(b, 14 * MS, {"download": 1e-4})
    assert s.compute_free_ns <= 14 * MS and s.in_flight == 0


def _expiring(overlap: bool = True) -> tuple[Scheduler, list[tuple[object, int]]]:
    s = make(overlap)
    gone: list[tuple[object, int]] = []
    s.on_expire = lambda req, late: gone.append((req.payload, late))
    return s, gone


def test_a_request_leaves_the_queue_once_it_cannot_make_it_while_the_device_is_still_busy() -> None:
    s, gone = _expiring()
    for i in range(32):
        s.add(0, i)
    s.take(0, 32)  # upload 16 ms, compute 36 ms: the device computes until 52 ms
    # One alone after that is back at 52 + 5 (compute 1) + 0.1 ms: an expiry at 40 ms cannot be met, at 80 ms can.
    s.add(1 * MS, "doomed", expire_ns=40 * MS)
    s.add(1 * MS, "fine", expire_ns=80 * MS)
    decision = s.next_action(2 * MS)  # long before the running batch ends
    assert [p for p, _ in gone] == ["doomed"] and len(s) == 1
    late_ms = gone[0][1] / MS
    assert 16 < late_ms < 18  # 57.1 ms at best against 40 ms
    assert decision.dispatch == 0


def test_the_wake_up_comes_no_later_than_the_next_expiry() -> None:
    s, gone = _expiring()
    s.add(0, "a", deadline_ns=900 * MS, expire_ns=50 * MS)
    # Alone on an idle device: 0.5 upload + 5 compute + 0.1 download, less the 5 ms margin (5 % of the 100 ms SLO).
    s.compute_free_ns = 0
    s.in_flight = 3  # the gate is shut: the policy would wait for a completion, the expiry must not
    decision = s.next_action(0)
    assert decision.dispatch == 0 and decision.wake_at_ns is not None
    assert 38 * MS <= decision.wake_at_ns <= 40 * MS
    assert not gone
    s.next_action(decision.wake_at_ns)
    assert [p for p, _ in gone] == ["a"] and len(s) == 0


def test_requests_without_an_expiry_are_never_taken_out() -> None:
    s, gone = _expiring()
    s.add(0, "no expiry", deadline_ns=1 * MS)
    assert s.next_action(10_000 * MS).dispatch == 1 and not gone


def test_a_tight_expiry_among_loose_deadlines_is_found_anywhere_in_the_queue() -> None:
    s, gone = _expiring(overlap=False)
    for i in range(5):
        s.add(0, f"loose{i}", deadline_ns=10 * MS, expire_ns=1000 * MS)
    s.add(0, "tight", deadline_ns=500 * MS, expire_ns=3 * MS)  # behind the others by deadline, first to expire
    batch = s.take(0, 2) if s.next_action(0).dispatch else None
    assert [p for p, _ in gone] == ["tight"]
    assert batch is None or all(r.payload != "tight" for r in batch.requests)


def test_expectation_counts_the_queue_and_the_broker_backlog() -> None:
    s = make(overlap=True)
    idle = s.expectation(0)
    assert idle.queue_s == 0 and idle.minimum_s == pytest.approx(5.6e-3)
    for _ in range(64):
        s.add(0)
    queued = s.expectation(0)
    behind = s.expectation(0, backlog=128)
    assert queued.total_s > idle.total_s and behind.queue_s > 2 * queued.queue_s
    # 193 requests (its own included) leave in four batches of 64: three before its own, 68 ms each.
    assert behind.queue_s == pytest.approx(3 * 0.068, rel=0.01)


def test_a_launch_bound_batch_is_booked_to_end_no_sooner_than_its_launch() -> None:
    """The launcher queues the kernels as the GPU runs them: 6 ms of launch cannot compute in 2 ms."""
    lines = {**LINES, "stage": Line(0.0, 1e-3), "launch": Line(0.0, 6e-3), "compute": Line(0.0, 2e-3)}
    s = Scheduler(TimeoutPolicy(64, 0.0), LatencyModel.from_lines(lines), max_batch=64, overlap=True, slo_ns=100 * MS)
    s.add(0)
    batch = s.take(0, 1)
    assert batch.compute_end_est_ns == 7 * MS  # stage 1 ms + launch 6 ms; upload (1.5 ms) + compute would end at 3.5


def test_serially_the_launch_is_inside_the_compute_it_times() -> None:
    model = LatencyModel.from_lines({**LINES, "launch": Line(0.0, 3e-3)})
    assert model.total(10) == model.lead(10) + model.compute(10) + model.download(10)
    assert len(model.streams(overlap=False)) == 1 and len(model.streams(overlap=True)) == 5
