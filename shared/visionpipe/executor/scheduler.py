"""The clock-free core shared by the asyncio executor and the simulator.

It owns the request queue (earliest deadline first; with one SLO that is
arrival order), the arrival-rate estimate, the latency model and the
device gate, and asks the policy what to do. Callers pass ``now_ns``, so the
asyncio executor runs it on ``time.monotonic_ns()`` and the simulator on a
virtual clock — the same decisions either way.

A request may also carry an expiry: past it, nobody wants its result. It is taken out of the queue the moment
it can no longer be done by then, device busy or not, never computed (``expiry.py``).

The gate is the mechanics of two streams: the next batch may be
handed to the device once its host staging and upload, started now, would
finish no earlier than the current compute ends (``compute_free − t_stage(n)
− t_up(n)``), so batches keep filling while the device is busy and the
compute stream never idles waiting for an upload. Serially (one stream) the
next batch goes only when the last one is back on the host.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visionpipe.executor.expectation import Expectation, expect
from visionpipe.executor.expiry import NEVER, DeadlineExceeded, Expiring
from visionpipe.executor.latency import LatencyModel
from visionpipe.executor.policy import DEADLINE_MARGIN_FRACTION, NS, BatchPolicy, Decision, QueueView
from visionpipe.executor.rate import RateEstimator

# Upload, compute and download of three batches can overlap; a fourth would only wait on the device.
MAX_IN_FLIGHT_OVERLAP = 3
# Fixed-point steps for the gate time: upload time depends on the batch size at the gate, which depends on
# the gate time; upload is a small fraction of compute, so two steps land within a few arrivals.
GATE_STEPS = 3
# The batch size a stage announces follows the batches it sent: an EWMA over about the last ten.
BATCH_EWMA_WEIGHT = 0.1

__all__ = ["MAX_IN_FLIGHT_OVERLAP", "Batch", "DeadlineExceeded", "Request", "Scheduler"]


@dataclass(slots=True)
class Request:
    arrival_ns: int
    deadline_ns: int
    payload: Any = None
    seq: int = 0
    expire_ns: int | None = None  # past this (less the margin) nobody wants its result: it is taken out, not run

    def __lt__(self, other: Request) -> bool:
        return (self.deadline_ns, self.seq) < (other.deadline_ns, other.seq)


@dataclass(slots=True)
class Batch:
    requests: list[Request]
    dispatch_ns: int
    compute_end_est_ns: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.requests)


class Scheduler(Expiring):
    """Queue + λ + latency model + gate + policy, driven by an external clock; expiry from ``Expiring``."""

    def __init__(
        self,
        policy: BatchPolicy,
        model: LatencyModel,
        *,
        max_batch: int,
        overlap: bool,
        slo_ns: int,
        rate: RateEstimator | None = None,
    ) -> None:
        self.policy = policy
        self.model = model
        self.rate = rate or RateEstimator()
        self.max_batch = max_batch
        self.overlap = overlap
        self.slo_ns = slo_ns
        self.in_flight = 0
        self.compute_free_ns = 0
        self.recent_batch = 1.0
        self.margin_ns = int(slo_ns * DEADLINE_MARGIN_FRACTION)
        # Told of each request taken out because it can no longer be done in time, and by how much it would miss.
        self.on_expire: Callable[[Request, int], None] | None = None
        # Told of each batch as it leaves, before the device has it (slack at dispatch, for metrics).
        self.on_dispatch: Callable[[Batch], None] | None = None
        self._heap: list[Request] = []
        self._on_device: list[Batch] = []  # dispatched, not yet complete, in dispatch order
        self._seq = itertools.count()
        self._first_expiry = NEVER  # the earliest expire_ns queued (a lower bound once requests leave)

    def __len__(self) -> int:
        return len(self._heap)

    def add(
        self, now_ns: int, payload: Any = None, deadline_ns: int | None = None, expire_ns: int | None = None
    ) -> Request:
        """Queue a request; ``deadline_ns`` orders and bounds its batch (default: now + SLO), ``expire_ns`` ends it."""
        deadline = deadline_ns if deadline_ns is not None else now_ns + self.slo_ns
        req = Request(now_ns, deadline, payload, next(self._seq), expire_ns)
        heapq.heappush(self._heap, req)
        self.rate.arrive(now_ns)
        self._note_expiry(expire_ns)
        return req

    def expectation(self, now_ns: int, backlog: float = 0.0, items: float = 1.0) -> Expectation:
        """What a message of ``items`` requests arriving now behind ``backlog`` more (in the broker) should expect."""
        return expect(
            self.model,
            self.rate.rate(now_ns),
            len(self._heap) + backlog,
            overlap=self.overlap,
            max_batch=self.max_batch,
            busy_s=max(self.compute_free_ns - now_ns, 0) / NS,
            recent_batch=self.recent_batch,
            items=items,
        )

    def earliest_deadline_ns(self) -> int | None:
        return self._heap[0].deadline_ns if self._heap else None

    def gate_ns(self, now_ns: int) -> int | None:
        """When the device can next take a batch; None until an in-flight batch completes."""
        if self.overlap:
            if self.in_flight >= MAX_IN_FLIGHT_OVERLAP:
                return None
            # The batch that leaves at the gate is bigger than the queue now: arrivals keep coming until
            # then, and its upload takes longer. Two fixed-point steps on n(t) = queued + λ·(t − now).
            rate = self.rate.rate(now_ns)
            gate = self.compute_free_ns
            for _ in range(GATE_STEPS):
                n = min(len(self._heap) + int(rate * max(gate - now_ns, 0) / NS), self.max_batch)
                gate = self.compute_free_ns - int(self.model.lead(max(n, 1)) * NS)
            return max(now_ns, gate)
        return now_ns if self.in_flight == 0 else None

    def view(self, now_ns: int) -> QueueView:
        head = self._heap[0]
        oldest = head.arrival_ns if len(self._heap) == 1 else min(r.arrival_ns for r in self._oldest_candidates())
        return QueueView(
            now_ns=now_ns,
            queued=len(self._heap),
            oldest_arrival_ns=oldest,
            earliest_deadline_ns=head.deadline_ns,
            rate=self.rate.rate(now_ns),
            model=self.model,
            max_batch=self.max_batch,
            overlap=self.overlap,
            compute_free_ns=max(self.compute_free_ns, now_ns),
            slo_ns=self.slo_ns,
        )

    def _oldest_candidates(self) -> list[Request]:
        # The heap is ordered by deadline; with one SLO the head is also the oldest. Looking at the
        # first few heap slots is enough for mixed deadlines and keeps this O(1).
        return self._heap[:8]

    def next_action(self, now_ns: int) -> Decision:
        """Dispatch now, or when to ask again (a time, a queue length, or — neither — the next completion).

        Expired requests leave first, so the policy never batches one; the answer's wake-up time is never
        later than the next expiry, so a request is taken out when it can no longer make it, device busy or not.
        A batch the policy sizes for throughput (the keep-up batch) may finish past the expiry of its most
        urgent requests: those are taken out too, answered now rather than computed late, and the policy asked
        again.
        """
        while True:
            self.expire(now_ns)
            if not self._heap:
                return Decision.wait()
            decision = self._decide(now_ns)
            if decision.dispatch <= 0:
                break
            if not self._expire_in_batch(now_ns, decision.dispatch):
                return decision
        expiry = self.next_expiry_ns(now_ns)
        if expiry is not None and (decision.wake_at_ns is None or expiry < decision.wake_at_ns):
            return Decision.wait(expiry, decision.wake_at_queued)
        return decision

    def _decide(self, now_ns: int) -> Decision:
        gate = self.gate_ns(now_ns)
        if gate is None:
            return Decision.wait()
        if gate > now_ns:
            return Decision.wait(gate)
        decision = self.policy.decide(self.view(now_ns))
        if decision.dispatch > 0:
            return Decision(min(decision.dispatch, len(self._heap), self.max_batch))
        return decision

    def take(self, now_ns: int, n: int) -> Batch:
        """Remove the ``n`` most urgent requests as a batch and book the device for them."""
        n = min(n, len(self._heap))
        reqs = [heapq.heappop(self._heap) for _ in range(n)]
        m = self.model
        if self.overlap:
            start = max(now_ns + int(m.lead(n) * NS), self.compute_free_ns)
            # The kernels run as they are queued: compute ends no sooner than the launcher has queued the last one.
            end = max(start + int(m.compute(n) * NS), now_ns + int(m.launched(n) * NS))
        else:
            start = max(now_ns, self.compute_free_ns) + int(m.lead(n) * NS)
            end = start + int(m.compute(n) * NS)
        self.compute_free_ns = end
        self.in_flight += 1
        self.recent_batch += BATCH_EWMA_WEIGHT * (n - self.recent_batch)
        batch = Batch(reqs, now_ns, end)
        self._on_device.append(batch)
        if self.on_dispatch is not None:
            self.on_dispatch(batch)
        return batch

    def complete(self, batch: Batch, now_ns: int, timings: dict[str, float] | None) -> list[int]:
        """Book a finished batch: learn its timings, free the device, tell the policy; returns latencies."""
        download_s = (timings or {}).get("download", self.model.download(batch.size))
        self._release(batch, now_ns - int(download_s * NS), now_ns)
        if timings:
            self.model.observe(batch.size, timings)
        latencies = [now_ns - r.arrival_ns for r in batch.requests]
        self.policy.on_batch_done(batch.size, latencies, now_ns - batch.dispatch_ns, self.slo_ns)
        return latencies

    def fail(self, batch: Batch, now_ns: int) -> None:
        """Book a batch that raised: the device is free again, nothing is learnt."""
        self._release(batch, now_ns, now_ns)

    def _release(self, batch: Batch, compute_end_ns: int, now_ns: int) -> None:
        """Correct the device booking with when this batch's compute really ended.

        Without this the estimate drifts: a batch that computes longer than predicted pushes every batch
        behind it, and in steady pipelining the device never drains to reset the guess, so the gate would
        open ever earlier and batches would queue on the device instead of filling in the queue.
        """
        self.in_flight -= 1
        with contextlib.suppress(ValueError):
            self._on_device.remove(batch)
        if not self._on_device:  # nothing else on the device: its compute is idle now, whatever we guessed
            self.compute_free_ns = min(self.compute_free_ns, now_ns)
            return
        error = compute_end_ns - batch.compute_end_est_ns
        for other in self._on_device:
            other.compute_end_est_ns += error
        self.compute_free_ns = max(self.compute_free_ns + error, now_ns)
