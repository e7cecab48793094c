"""A stage's Prometheus series from the verdicts: outcomes, requests shed and why, errors, batch sizes, phase times."""

from __future__ import annotations

from collections.abc import Sequence

from visionpipe import topology
from visionpipe.envelope import Envelope, Event
from visionpipe.services.runtime.middleware.base import Item, Middleware, StageContext, Verdict
from visionpipe.topology import INGRESS

OUTCOME_LABELS = {
    Verdict.DONE: "ok",
    Verdict.DEAD: "dead_letter",
    Verdict.EXPIRED: "deadline_exceeded",
    Verdict.DUPLICATE: "duplicate",
}


class StageMetrics(Middleware):
    def on_consume(self, ctx: StageContext, items: Sequence[Item]) -> None:
        ctx.metrics.consumed.labels(ctx.stage).observe(len(items))

    def on_outcome(self, ctx: StageContext, item: Item) -> None:
        if item.verdict is Verdict.FAILED:
            ctx.metrics.errors.labels(ctx.stage, type(item.outcome).__name__).inc()

    def after_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        m, name = ctx.metrics, ctx.stage
        for verdict, label in OUTCOME_LABELS.items():
            m.messages.labels(name, label).inc(sum(it.verdict is verdict for it in items))
        for it in items:
            if it.verdict is Verdict.EXPIRED and it.expired is not None:
                m.shed.labels(name, it.expired.why).inc()
            if it.verdict is Verdict.DONE and isinstance(it.outcome, Envelope):
                for phase, seconds in phases(it.outcome, name).items():
                    m.latency.labels(name, phase).observe(seconds)


def phases(env: Envelope, stage: str) -> dict[str, float]:
    """Seconds of ``stage`` on this request: hop (the previous publish to this dequeue: time in the broker),
    compute, and total in the stage (dequeue to publish)."""
    before = topology.previous(stage)
    published_before = env.ts(INGRESS, Event.ENQUEUED) if before == INGRESS else env.ts(before, Event.PUBLISHED)
    spans = {
        "hop": (published_before, env.ts(stage, Event.DEQUEUED)),
        "compute": (env.ts(stage, Event.BATCH_START), env.ts(stage, Event.COMPUTE_DONE)),
        "total": (env.ts(stage, Event.DEQUEUED), env.ts(stage, Event.PUBLISHED)),
    }
    return {p: max(0, b - a) / 1e9 for p, (a, b) in spans.items() if a is not None and b is not None}
