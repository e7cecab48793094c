"""Prometheus metrics of a stage: throughput, batch sizes, backlog, latency per phase, errors, GPU memory.

One :class:`Metrics` per process with its own registry (not the global one),
so several stages in one process (``visionpipe run``) and tests that build
many stages never collide; every series carries a ``stage`` label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Batch sizes are small powers of two in practice; the top buckets catch large fixed batches.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# From sub-millisecond broker hops to multi-second CPU detector batches.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The series every stage exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "visionpipe_messages", "Messages finished by a stage, by outcome", ["stage", "outcome"], registry=r
        )
        self.consumed = Histogram(
            "visionpipe_consumed_messages",
            "Messages per consume call (not the device batch)",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.device_batch = Histogram(
            "visionpipe_device_batch_size",
            "Items per batch run on the device by the executor",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "visionpipe_stage_latency_seconds",
            "Time per message in a stage, by phase (hop: in the broker since the previous publish; compute; total)",
            ["stage", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "visionpipe_backlog", "Pending plus undelivered messages of the stage's group", ["stage"], registry=r
        )
        self.inflight = Gauge("visionpipe_inflight_batches", "Consumed batches not yet acked", ["stage"], registry=r)
        self.errors = Counter(
            "visionpipe_errors", "Failures by kind (transient ones are retried)", ["stage", "kind"], registry=r
        )
        self.gpu_memory = Gauge(
            "visionpipe_gpu_memory_bytes", "CUDA memory held by torch in this process", ["kind"], registry=r
        )
        self.ready = Gauge("visionpipe_ready", "1 when the stage is ready to serve", ["stage"], registry=r)
        self.broker_resets = Counter(
            "visionpipe_broker_resets",
            "Times the broker had lost the stage's streams or group (restarted empty) and they were made again",
            ["stage"],
            registry=r,
        )
        self.published_bytes = Counter(
            "visionpipe_published_bytes",
            "Bytes of the messages a stage published to its output stream (none when handed on by reference)",
            ["stage"],
            registry=r,
        )
        self._deadline_series(r)
        self.duplicates = Counter(
            "visionpipe_duplicates_dropped",
            "Inputs settled again whose outputs the broker had already published, so published nothing",
            ["stage"],
            registry=r,
        )

    def _deadline_series(self, r: CollectorRegistry) -> None:
        """What the stage did with requests' deadlines: shed and why, the budget given, the slack, feasibility."""
        self.shed = Counter(
            "visionpipe_deadline_shed",
            "Requests answered deadline_exceeded instead of computed, by why: passed (already late when taken), "
            "budget (its part of the deadline shorter than the stage's fastest answer), queue (ran out of time "
            "waiting for the device)",
            ["stage", "why"],
            registry=r,
        )
        self.budget = Histogram(
            "visionpipe_deadline_budget_seconds",
            "The part of a request's deadline a stage was given, when it took the request",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slack = Histogram(
            "visionpipe_deadline_slack_seconds",
            "Time to a request's stage deadline left over when its device batch was dispatched (predicted)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slo_feasible = Gauge(
            "visionpipe_slo_feasible",
            "1 while the stage can meet its latency bound at the load it sees (its batching policy's judgement)",
            ["stage"],
            registry=r,
        )

    def observe_gpu_memory(self) -> None:
        """Refresh GPU memory gauges (on scrape); a no-op without CUDA or torch."""
        try:
            import torch
        except ImportError:
            return
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        self.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated())
        self.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved())
        self.gpu_memory.labels("max_allocated").set(torch.cuda.max_memory_allocated())

    def exposition(self) -> bytes:
        self.observe_gpu_memory()
        return generate_latest(self.registry)
