"""What a load run measured: latency histograms, matching of results to requests, the breakdown.

End-to-end latency runs from a request's *scheduled* send time (monotonic
clock, so a clock step cannot bend it) to the moment its result is read
back, recorded in an HDR histogram in microseconds. The per-stage breakdown
(``visionpipe.breakdown``) uses the wall-clock stamps the stages put in the
envelope, because those are the only times comparable across processes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from visionpipe.breakdown import CATEGORIES, DNN, SEGMENTS, category, segments
from visionpipe.broker import DeadLetter
from visionpipe.envelope import Envelope
from visionpipe.hops import Expiry

# HDR range: 1 µs to 1 h at 3 significant digits (0.1 % error), ~200 KB per histogram.
HIST_MIN_US = 1
HIST_MAX_US = 3_600_000_000
HIST_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_MIN_US, HIST_MAX_US, HIST_DIGITS)


@dataclass
class Recorder:
    """Requests sent, results and dead letters received; thread-unsafe, one event loop."""

    run_id: str
    wall0_ns: int
    mono0_ns: int
    latency: HdrHistogram = field(default_factory=new_histogram)
    segments: dict[str, HdrHistogram] = field(default_factory=lambda: {s: new_histogram() for s in SEGMENTS})
    segment_sums_ns: Counter[str] = field(default_factory=Counter)
    e2e_wall_sum_ns: int = 0
    latency_sum_ns: int = 0
    scheduled: dict[str, int] = field(default_factory=dict)  # request id → scheduled monotonic ns
    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # request id → reason (dead letter / backpressure)
    expired: dict[str, str] = field(default_factory=dict)  # request id → stage that answered deadline_exceeded
    late: int = 0  # results read after their request's deadline
    duplicates: int = 0
    strays: int = 0  # results whose id this run never sent (an earlier run's, on kept streams)
    objects: int = 0
    weights: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (scheduled s from start, latency ms)
    received_at: list[float] = field(default_factory=list)  # s from start, for throughput over time
    first_send_mono_ns: int | None = None
    last_receive_mono_ns: int | None = None

    def wall_ns(self, mono_ns: int) -> int:
        """A monotonic time of this run on the wall clock (the stages' and deadlines' clock)."""
        return self.wall0_ns + (mono_ns - self.mono0_ns)

    def sent(self, request_id: str, scheduled_mono_ns: int) -> None:
        self.scheduled[request_id] = scheduled_mono_ns
        if self.first_send_mono_ns is None:
            self.first_send_mono_ns = scheduled_mono_ns

    def rejected(self, request_id: str, reason: str) -> None:
        """The request never entered the pipeline (backpressure beyond the wait): counted as failed."""
        self.failed[request_id] = reason

    @property
    def outstanding(self) -> int:
        return (
            len(self.scheduled) - len(self.done) - len(self.failed.keys() & self.scheduled.keys()) - len(self.expired)
        )

    def on_expired(self, env: Envelope, expiry: Expiry) -> bool:
        """A request a stage answered deadline_exceeded: neither a result nor a failure. True: one of ours, first."""
        rid = env.request_id
        if rid not in self.scheduled:
            self.strays += 1
            return False
        if rid in self.done or rid in self.failed or rid in self.expired:
            self.duplicates += 1
            return False
        self.expired[rid] = expiry.stage
        return True

    def on_result(self, env: Envelope, recv_mono_ns: int, recv_wall_ns: int) -> bool:
        """Record a result; returns True when it completes a request of this run for the first time."""
        rid = env.request_id
        sched = self.scheduled.get(rid)
        if sched is None:
            self.strays += 1
            return False
        if rid in self.done or rid in self.failed:
            self.duplicates += 1
            return False
        self.done.add(rid)
        if env.deadline_ns is not None and recv_wall_ns > env.deadline_ns:
            self.late += 1
        latency_ns = recv_mono_ns - sched
        self.latency.record_value(max(HIST_MIN_US, latency_ns // 1000))
        self.latency_sum_ns += latency_ns
        sched_wall = self.wall0_ns + (sched - self.mono0_ns)
        parts = segments(env, sched_wall, recv_wall_ns)
        for name, ns in parts.items():
            self.segments[name].record_value(max(HIST_MIN_US, ns // 1000))
            self.segment_sums_ns[name] += ns
        self.e2e_wall_sum_ns += recv_wall_ns - sched_wall
        self.objects += len(env.payload.get("objects", []) or [])
        if isinstance(env.payload.get("weights"), dict):
            self.weights = env.payload["weights"]
        self.timeline.append(((sched - self.mono0_ns) / 1e9, latency_ns / 1e6))
        self.received_at.append((recv_mono_ns - self.mono0_ns) / 1e9)
        self.last_receive_mono_ns = recv_mono_ns
        return True

    def on_dead_letter(self, letter: DeadLetter) -> bool:
        """A request a stage refused: failed, not lost. Returns True when it is one of ours, first time."""
        rid = letter.request_id
        if rid is None or rid not in self.scheduled:
            self.strays += 1
            return False
        if rid in self.done or rid in self.failed or rid in self.expired:
            self.duplicates += 1
            return False
        self.failed[rid] = f"{letter.stage}: {letter.reason}"
        return True

    def summary(self, duration_s: float) -> dict[str, Any]:
        """Everything the report needs, as plain JSON-able data (milliseconds)."""
        completed = len(self.done)
        sent = len(self.scheduled)
        failed = len(self.failed.keys() & self.scheduled.keys())
        span_s = duration_s
        if self.first_send_mono_ns is not None and self.last_receive_mono_ns is not None:
            span_s = max(duration_s, (self.last_receive_mono_ns - self.first_send_mono_ns) / 1e9)
        e2e_ms = self.e2e_wall_sum_ns / 1e6
        cat_ms: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
        for name, ns in self.segment_sums_ns.items():
            cat_ms[category(name)] += ns / 1e6
        dnn_ms = sum(cat_ms[c] for c in DNN)
        return {
            "sent": sent,
            "completed": completed,
            "failed": failed,
            "lost": sent - completed - failed - len(self.expired),
            "deadline_exceeded": len(self.expired),
            "deadline_exceeded_by_stage": dict(Counter(self.expired.values())),
            "late": self.late,
            "duplicates": self.duplicates,
            "strays": self.strays,
            "failure_reasons": dict(Counter(self.failed.values()).most_common(5)),
            "throughput_rps": completed / span_s if span_s > 0 else 0.0,
            "offered_rps": sent / duration_s if duration_s > 0 else 0.0,
            "objects_per_image": self.objects / completed if completed else 0.0,
            "latency_ms": hist_summary(self.latency, self.latency_sum_ns / 1e6 / max(1, completed)),
            "segments_ms": {
                name: hist_summary(self.segments[name], self.segment_sums_ns[name] / 1e6 / completed)
                for name in SEGMENTS
                if self.segments[name].get_total_count()
            },
            "categories_mean_ms": {c: cat_ms[c] / completed for c in CATEGORIES} if completed else {},
            "non_dnn_share": (e2e_ms - dnn_ms) / e2e_ms if e2e_ms > 0 else None,
            "weights": self.weights,
            "timeline": self.timeline,
            "received_at": self.received_at,
            "cdf": cdf_points(self.latency),
        }


def hist_summary(h: HdrHistogram, mean_ms: float) -> dict[str, float]:
    """Percentiles in ms from one pass over the histogram; the mean is passed in because
    hdrh computes its own by walking every bucket (~0.1 s per histogram)."""
    if h.get_total_count() == 0:
        return {}
    values = h.get_percentile_to_value_dict(list(PERCENTILES))
    out = {f"p{p:g}": values[p] / 1000 for p in PERCENTILES}
    out.update(mean=mean_ms, min=h.get_min_value() / 1000, max=h.get_max_value() / 1000)
    out["count"] = h.get_total_count()
    return out


def cdf_points(h: HdrHistogram) -> list[tuple[float, float]]:
    """(latency ms, cumulative fraction) at HDR's percentile ticks, for the CDF plot."""
    total = h.get_total_count()
    if total == 0:
        return []
    return [
        (item.value_iterated_to / 1000, item.total_count_to_this_value / total) for item in h.get_percentile_iterator(5)
    ]
