"""Batching policies: when to hand the device a batch, and how big.

A policy is asked only when the device can take a batch (the scheduler holds
that gate: with two streams, the moment an upload started now would finish
as the current compute ends; serially, when the last batch is back). It sees
a ``QueueView`` and answers ``Decision``: dispatch ``n`` now, or wait until a
time or until the queue holds a number of requests, whichever is first.
Policies never read a clock, so the same objects run in the asyncio executor
and in the discrete-event simulator, deterministically.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from visionpipe.executor.latency import LatencyModel

if TYPE_CHECKING:
    from visionpipe.settings import ExecutorSettings

NS = 1_000_000_000
# Dispatch this much before the computed last moment: covers model error and event-loop jitter.
# 5% of the SLO is well above the fit's typical residual (a few % of a batch time), well below the SLO.
DEADLINE_MARGIN_FRACTION = 0.05
# The slack policy aims at the deadline on purpose, so model error lands directly in its p99: the linear fit of a
# launch-bound (floored) cost is off by up to ~10% of a batch time; 12% of the SLO keeps its p99 inside the SLO.
SLACK_MARGIN_FRACTION = 0.12
# Clipper's AIMD: +1 per batch under the SLO, ×0.9 on a miss (its paper's backoff factor).
AIMD_DECREASE = 0.9
# On an idle device, wait for the keep-up batch at most this fraction of its compute time (unless ``idle_fill`` is
# None). Waiting costs the first request that much; in the simulator waiting the whole fill time b/λ
# raised p99 1.3-2.1x at 80-90% load on the h100-uint8 and h100-graphs costs for 1-2% less GPU time
# per request (the linear fit of a launch-bound, floored cost overestimates b), while a quarter merges
# near-simultaneous arrivals at no measurable cost. benchmarks/RESULTS.md has the rows.
IDLE_FILL_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class QueueView:
    """What a policy may look at. Times are monotonic ns, durations from ``model`` in seconds."""

    now_ns: int
    queued: int
    oldest_arrival_ns: int
    earliest_deadline_ns: int
    rate: float  # λ, requests/s
    model: LatencyModel
    max_batch: int
    overlap: bool
    compute_free_ns: int  # when the device's compute stream is expected to be idle
    slo_ns: int

    def done_ns(self, n: int, dispatch_ns: int) -> int:
        """When a batch of ``n`` dispatched at ``dispatch_ns`` should be back on the host."""
        m = self.model
        if self.overlap:
            start = max(dispatch_ns + int(m.lead(n) * NS), self.compute_free_ns)
            end = max(start + int(m.compute(n) * NS), dispatch_ns + int(m.launched(n) * NS))
            return end + int(m.download(n) * NS)
        return max(dispatch_ns, self.compute_free_ns) + int(m.total(n) * NS)

    def largest_on_time(self, hi: int, margin_fraction: float = DEADLINE_MARGIN_FRACTION) -> int:
        """The largest batch ≤ ``hi`` sent now whose most urgent request still meets its deadline; 0 if none.

        ``done_ns`` grows with n, so a bisection finds it in log2(max batch) steps.
        """
        limit = self.earliest_deadline_ns - int(self.slo_ns * margin_fraction)
        lo, top = 0, hi
        while lo < top:
            mid = (lo + top + 1) // 2
            lo, top = (mid, top) if self.done_ns(mid, self.now_ns) <= limit else (lo, mid - 1)
        return lo

    def latest_dispatch_ns(self, n: int, margin_fraction: float = DEADLINE_MARGIN_FRACTION) -> int:
        """The last moment a batch of ``n`` can leave and still meet the earliest deadline (with margin)."""
        margin = int(self.slo_ns * margin_fraction)
        late = self.done_ns(n, self.now_ns) - self.earliest_deadline_ns + margin
        return self.now_ns - late

    def expected_queued(self, at_ns: int) -> int:
        """Queue length at ``at_ns`` if arrivals keep coming at λ, capped at the maximum batch."""
        grow = self.rate * max(at_ns - self.now_ns, 0) / NS
        return min(self.max_batch, self.queued + int(grow))


@dataclass(frozen=True, slots=True)
class Decision:
    dispatch: int = 0  # > 0: send this many now (the most urgent first)
    wake_at_ns: int | None = None  # ask again at this time at the latest
    wake_at_queued: int | None = None  # ...or as soon as this many are queued

    @staticmethod
    def wait(until_ns: int | None = None, queued: int | None = None) -> Decision:
        return Decision(0, until_ns, queued)


class BatchPolicy(ABC):
    """One rule for forming batches. ``on_batch_done`` lets adaptive rules learn from outcomes."""

    name = "policy"

    @abstractmethod
    def decide(self, view: QueueView) -> Decision: ...

    def params(self) -> dict[str, float | int | str | None]:
        return {}

    def on_batch_done(  # noqa: B027 - optional hook
        self, size: int, latencies_ns: list[int], service_ns: int, slo_ns: int
    ) -> None:
        """Each finished batch: per-request latencies (arrival to output) and dispatch-to-output time."""


def _wait_or_dispatch(view: QueueView, target: int, until_ns: int) -> Decision:
    """Dispatch the partial batch if its time has come, else wait for it to fill or for that time."""
    if view.queued >= target:
        return Decision(min(view.queued, view.max_batch))
    if view.now_ns >= until_ns:
        return Decision(view.queued)
    return Decision.wait(until_ns, target)


def keep_up_batch(model: LatencyModel, rate: float, overlap: bool, max_batch: int) -> int:
    """The keep-up rule: the smallest b with which every serialising stream finishes a batch before the next arrives.

    For a stream with t(b) = k·b + c, keeping up means t(b) ≤ b/λ, i.e. b ≥ cλ / (1 − kλ). Serially the
    round trip is one stream (k and c summed over the phases); with overlap each phase is its own (host
    staging, upload, compute, download), so b is the largest of the per-stream bounds — each with its own
    k *and* c, never one phase's slope with another's intercept. Past a stream's ceiling λ ≥ 1/k no b keeps
    up and the answer is the largest batch, which drains the queue fastest.
    """
    if rate <= 0:
        return 1
    need = 1.0
    for line in model.streams(overlap):
        denom = 1.0 - line.k * rate
        if denom <= 0:
            return max_batch
        need = max(need, line.c * rate / denom)
    return max(1, min(max_batch, math.ceil(need - 1e-9)))


def slo_batch(model: LatencyModel, rate: float, slo_s: float) -> float:
    """The largest b whose first request meets the SLO when the batch fills at λ: b/λ + t(b) ≤ S.

    The latency bound with the fitted phases, L(b) = b/λ + t_stage + t_up + t_comp + t_down. It is the
    same with two streams, because the gate dispatches just in time (the upload ends as the previous compute
    does), so a batch never waits for the device. Solving gives b ≤ λ(S − C) / (1 + Kλ); with λ = 0 there is
    no fill time and any b with t(b) ≤ S fits. May be < 1: then no batch meets the SLO at this λ.
    """
    (line,) = model.streams(overlap=False)
    if rate <= 0:
        return math.inf if line.k == 0 else (slo_s - line.c) / line.k
    return rate * (slo_s - line.c) / (1.0 + line.k * rate)


class AdaptivePolicy(BatchPolicy):
    """The keep-up rule in its two-stream form, with the fitted phases and the SLO bound.

    Target b = the smallest batch with which every stream keeps up at the measured λ (``keep_up_batch``);
    ``slo_batch`` is the largest b the SLO allows at that λ, and a target above it means no batch meets
    the SLO at this load (recorded in ``slo_feasible``). The policy is asked when the device can take a
    batch: with two streams that is the planned upload moment, T_compute_end − t_stage(b) − t_up(b).

    * The device is busy (the planned moment): send what has filled — the load rose if b or more are
      queued, fell if fewer — but never so many that the most urgent request misses its deadline, and
      never fewer than the keep-up batch (fewer would let the queue grow without bound).
    * The device is idle: wait for the target to fill, at most ``idle_fill`` of its compute time (None:
      the whole fill time b/λ) and never past the most urgent request's deadline.
    """

    name = "adaptive"

    def __init__(self, idle_fill: float | None = IDLE_FILL_FRACTION) -> None:
        self.idle_fill = idle_fill
        self.slo_feasible = True

    def params(self) -> dict[str, float | int | str | None]:
        return {} if self.idle_fill == IDLE_FILL_FRACTION else {"idle_fill": self.idle_fill}

    def decide(self, view: QueueView) -> Decision:
        keep = keep_up_batch(view.model, view.rate, view.overlap, view.max_batch)
        slo_s = view.slo_ns * (1.0 - DEADLINE_MARGIN_FRACTION) / NS
        self.slo_feasible = keep <= slo_batch(view.model, view.rate, slo_s)
        hi = min(view.queued, view.max_batch)
        if view.compute_free_ns > view.now_ns or view.queued >= keep:
            fit = view.largest_on_time(hi)
            return Decision(max(fit, min(keep, hi)) if fit else hi)
        fill_s = keep / view.rate if view.rate > 0 else 0.0
        if self.idle_fill is not None:
            fill_s = min(fill_s, self.idle_fill * view.model.compute(keep))
        until = min(view.oldest_arrival_ns + int(fill_s * NS), view.latest_dispatch_ns(keep))
        return _wait_or_dispatch(view, keep, until)


class SlackPolicy(BatchPolicy):
    """Batch up to what the SLO leaves: the least GPU time per request, for devices shared by stages.

    Waits until the last moment the most urgent request can still make its
    deadline with the batch expected by then, or until the maximum batch is
    queued. Latency approaches the SLO by design; throughput per GPU-second
    is the best any rule gets on a launch-bound model.
    """

    name = "slack"

    def decide(self, view: QueueView) -> Decision:
        if view.queued >= view.max_batch:
            return Decision(view.max_batch)
        # The batch grows while we wait, so its processing time does too: two fixed-point steps suffice.
        n = view.queued
        at = view.latest_dispatch_ns(n, SLACK_MARGIN_FRACTION)
        for _ in range(2):
            n = max(view.queued, view.expected_queued(at))
            at = view.latest_dispatch_ns(n, SLACK_MARGIN_FRACTION)
        if view.now_ns >= at:
            return Decision(view.queued)
        # Re-plan if the queue outgrows the plan: a bigger batch takes longer, so it must leave earlier.
        return Decision.wait(at, min(n + 1, view.max_batch))


class FixedPolicy(BatchPolicy):
    """Always batches of ``batch`` (the fixed-batch baseline); a partial batch only at a timeout or a deadline."""

    name = "fixed"

    def __init__(self, batch: int, timeout_ms: float | None = None) -> None:
        self.batch = max(1, batch)
        self.timeout_ms = timeout_ms

    def params(self) -> dict[str, float | int | str | None]:
        return {"batch": self.batch, "timeout_ms": self.timeout_ms}

    def decide(self, view: QueueView) -> Decision:
        b = min(self.batch, view.max_batch)
        if view.queued >= b:
            return Decision(b)
        until = view.latest_dispatch_ns(b)
        if self.timeout_ms is not None:
            until = min(until, view.oldest_arrival_ns + int(self.timeout_ms * 1e6))
        return _wait_or_dispatch(view, b, until)


class TimeoutPolicy(BatchPolicy):
    """Triton's dynamic batcher: up to ``max_batch``; a partial batch once the oldest waited ``delay``.

    Delay 0 is greedy dynamic batching: whatever is queued when the device frees up.
    """

    name = "timeout"

    def __init__(self, max_batch: int, delay_ms: float) -> None:
        self.max_batch = max(1, max_batch)
        self.delay_ms = delay_ms

    def params(self) -> dict[str, float | int | str | None]:
        return {"max_batch": self.max_batch, "delay_ms": self.delay_ms}

    def decide(self, view: QueueView) -> Decision:
        b = min(self.max_batch, view.max_batch)
        if view.queued >= b:
            return Decision(b)
        return _wait_or_dispatch(view, b, view.oldest_arrival_ns + int(self.delay_ms * 1e6))


class AimdPolicy(BatchPolicy):
    """Clipper: greedy up to a cap; cap +1 while batches finish within the SLO, ×0.9 when one does not."""

    name = "aimd"

    def __init__(self, max_batch: int, start: int | None = None) -> None:
        self.max_batch = max(1, max_batch)
        # Clipper starts small and grows +1 per batch; on a trace of seconds that slow start alone builds a
        # backlog that dominates p99, so the tuned baseline starts at the maximum and backs off from there.
        self.cap = float(max(1, self.max_batch if start is None else start))

    def decide(self, view: QueueView) -> Decision:
        return Decision(min(view.queued, int(self.cap), view.max_batch))

    def on_batch_done(self, size: int, latencies_ns: list[int], service_ns: int, slo_ns: int) -> None:
        # Clipper backs off on the batch's own processing time, not end-to-end latency: queueing delay
        # from a backlog would otherwise shrink the batch, which grows the backlog — a death spiral.
        if service_ns > slo_ns:
            self.cap = max(1.0, self.cap * AIMD_DECREASE)
        elif size >= int(self.cap):  # only grow when the cap is what limited the batch
            self.cap = min(float(self.max_batch), self.cap + 1.0)


def make_policy(settings: ExecutorSettings) -> BatchPolicy:
    """The policy named by ``settings.policy``, with its parameters from the same settings."""
    name = settings.policy
    if name == "adaptive":
        return AdaptivePolicy()
    if name == "slack":
        return SlackPolicy()
    if name == "fixed":
        return FixedPolicy(settings.fixed_batch, settings.fixed_timeout_ms)
    if name == "timeout":
        return TimeoutPolicy(settings.max_batch, settings.max_queue_delay_ms)
    if name == "aimd":
        return AimdPolicy(settings.max_batch, start=settings.max_batch)
    raise ValueError(f"unknown executor policy {name!r}: use adaptive, slack, fixed, timeout or aimd")
