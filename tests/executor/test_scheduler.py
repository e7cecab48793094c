"""The scheduler's mechanics: the two-stream gate, the serial gate, earliest-deadline order."""

from __future__ import annotations

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
