"""Discrete-event simulation: the real ``Scheduler`` and policies on a virtual clock and a ``SimDevice``.

Events are arrivals, batch completions and the policy's own wake-ups; a
policy waiting for its batch to fill costs nothing per arrival (the
simulator jumps to the arrival that fills it), so a second of 10k req/s
simulates in well under a second. Deterministic for a given trace and seed.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from visionpipe.executor.latency import PHASES, LatencyModel
from visionpipe.executor.policy import BatchPolicy, Decision
from visionpipe.executor.scheduler import Batch, Scheduler
from visionpipe.executor.sim_device import CostModel, SimBatch, SimDevice

NS = 1_000_000_000
# Warm-up spacing: far enough apart that warm-up batches never queue behind each other.
_WARMUP_GAP_NS = 10 * NS
WARMUP_REPEATS = 3
INF = math.inf


@dataclass
class SimResult:
    arrivals_ns: np.ndarray
    done_ns: np.ndarray  # -1 where a request was never served
    batch_dispatch_ns: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    gpu_busy_s: float = 0.0
    slo_ns: int = 0

    @property
    def latencies_ms(self) -> np.ndarray:
        served = self.done_ns >= 0
        return (self.done_ns[served] - self.arrivals_ns[served]) / 1e6

    def summary(self) -> dict[str, float]:
        lat = self.latencies_ms
        n = len(self.arrivals_ns)
        if not len(lat):
            return {"throughput": 0.0, "p50_ms": INF, "p99_ms": INF, "slo_attainment": 0.0, "mean_batch": 0.0}
        span_s = (self.done_ns.max() - self.arrivals_ns.min()) / NS
        unserved = n - len(lat)
        return {
            "throughput": float(len(lat) / span_s) if span_s > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if not unserved else INF,
            "p99_ms": float(np.percentile(lat, 99)) if unserved <= n // 100 else INF,
            "slo_attainment": float(np.sum(lat <= self.slo_ns / 1e6)) / n,
            "mean_batch": float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0,
            "gpu_busy_s": self.gpu_busy_s,
            "served": float(len(lat)),
        }

    def peak_p99_ms(self, window_s: float = 0.1) -> float:
        """The worst p99 over arrival windows of ``window_s``: what a dashboard shows during a burst."""
        served = self.done_ns >= 0
        if not served.all():
            return INF
        lat = (self.done_ns - self.arrivals_ns) / 1e6
        bins = (self.arrivals_ns // int(window_s * NS)).astype(np.int64)
        worst = 0.0
        for b in np.unique(bins):
            sel = lat[bins == b]
            if len(sel) >= 10:
                worst = max(worst, float(np.percentile(sel, 99)))
        return worst


def warmed_model(
    cost: CostModel, overlap: bool, sizes: tuple[int, int], history: int, seed: int, pinned: bool = True
) -> LatencyModel:
    """A latency model seeded as ``BatchExecutor.start`` seeds it: a few timed runs at two batch sizes."""
    dev = SimDevice(cost, max_batch=max(sizes), overlap=overlap, seed=seed + 7919, pinned=pinned)
    samples: dict[str, list[tuple[int, float]]] = {p: [] for p in PHASES}
    t = 0
    for b in sizes:
        for _ in range(WARMUP_REPEATS):
            timings = dev.schedule(b, t).timings()
            for phase in PHASES:
                samples[phase].append((b, timings[phase]))
            t += _WARMUP_GAP_NS
    model = LatencyModel(history)
    model.seed(samples)
    return model


# (download end, dispatch order, batch, its simulated phases): a heap of the batches on the device.
Completions = list[tuple[int, int, Batch, SimBatch]]


def simulate(
    policy: BatchPolicy,
    cost: CostModel,
    arrivals_ns: np.ndarray,
    *,
    overlap: bool,
    max_batch: int,
    slo_ms: float,
    pinned: bool = True,
    seed: int = 0,
    history: int = 64,
    model: LatencyModel | None = None,
    device: SimDevice | None = None,
    max_queue: int | None = None,
) -> SimResult:
    """Run ``arrivals_ns`` (sorted) through the scheduler, ``policy`` and a simulated device.

    ``overlap``: the two-stream mechanics; serially, ``pinned`` picks a pinned or a pageable upload.

    ``max_queue``: give up once this many requests wait (a hopelessly overloaded run); the rest count as
    unserved, which makes its p99 infinite, and its throughput is what the device did until then.
    """
    model = model or warmed_model(cost, overlap, (1, max_batch), history, seed, pinned)
    device = device or SimDevice(cost, max_batch=max_batch, overlap=overlap, seed=seed, pinned=pinned)
    sched = Scheduler(policy, model, max_batch=max_batch, overlap=overlap, slo_ns=int(slo_ms * 1e6))
    arrivals = np.asarray(arrivals_ns, dtype=np.int64)
    arr = arrivals.tolist()
    n = len(arr)
    result = SimResult(arrivals, np.full(n, -1, dtype=np.int64), slo_ns=sched.slo_ns)
    done = result.done_ns
    completions: Completions = []
    i, seq = 0, 0
    wake_ns: float = INF
    wake_q: int | None = 1
    while True:
        t_comp = completions[0][0] if completions else INF
        t_q: float = INF
        if wake_q is not None:
            idx = i + max(wake_q - len(sched), 1) - 1
            t_q = arr[idx] if idx < n else INF
        now_f = min(t_comp, wake_ns, t_q)
        if now_f == INF:
            break
        now = int(now_f)
        while i < n and arr[i] <= now:
            sched.add(arr[i], i)
            i += 1
        if max_queue is not None and len(sched) > max_queue:
            break
        _complete(sched, completions, now, done)
        decision, seq = _dispatch(sched, device, result, completions, now, seq)
        wake_ns = INF if decision.wake_at_ns is None else max(decision.wake_at_ns, now + 1)
        wake_q = decision.wake_at_queued if len(sched) else 1
    result.gpu_busy_s = device.busy_s
    return result


def _complete(sched: Scheduler, completions: Completions, now: int, done: np.ndarray) -> None:
    """Every batch whose download has ended by ``now``: its requests are done then."""
    while completions and completions[0][0] <= now:
        t_done, _, batch, sb = heapq.heappop(completions)
        sched.complete(batch, t_done, sb.timings())
        for r in batch.requests:
            done[r.payload] = t_done


def _dispatch(
    sched: Scheduler, device: SimDevice, result: SimResult, completions: Completions, now: int, seq: int
) -> tuple[Decision, int]:
    """Send every batch the policy sends at ``now``; returns its last decision (when to look again) and ``seq``."""
    while True:
        decision = sched.next_action(now)
        if decision.dispatch <= 0:
            return decision, seq
        batch = sched.take(now, decision.dispatch)
        sb = device.schedule(batch.size, now)
        result.batch_dispatch_ns.append(now)
        result.batch_sizes.append(batch.size)
        heapq.heappush(completions, (sb.download_end, seq, batch, sb))
        seq += 1
