"""The hooks a per-message policy may implement, what they are told, and the order they run in.

An :class:`Item` is one delivery on its way through a worker. Its
:class:`Verdict` starts as ``WORK`` and ends as one of: ``DONE`` (its output
is published), ``DEAD`` (dead-lettered with ``reason``), ``EXPIRED`` (out of
time: answered ``deadline_exceeded`` on the results stream, not computed),
``DUPLICATE`` (already done: acked without work), ``FAILED`` (a transient
failure: left pending for redelivery) or ``SKIP`` (the same request is in
progress here: left alone, neither worked on nor acked).

A hook gets a :class:`StageContext` (the stage's name, streams, group,
consumer, broker, settings and metrics), never the worker, so a policy can be
built and tested on its own. Hook order for one consumed batch::

    on_consume (the whole batch) -> admit (each item, until one middleware decides)
    -> the stage works -> on_outcome (each processed item) -> before_ack
    -> settle (outputs published and inputs acked in one step) -> after_ack
    -> on_release (every item but the skipped)

:class:`Chain` runs them like a stack: ``on_consume`` and ``admit`` in list
order, every later hook in reverse, so the policy that saw a message first
is the last to let go of it (the heartbeat, first in the list, keeps a
delivery ours until every other policy is done with it), and a policy added
at the end sees the others' admission and still decides an outcome before
the dead letters are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from visionpipe import topology
from visionpipe.broker import Broker, Delivery, Output
from visionpipe.broker.base import BAD_INPUT
from visionpipe.envelope import Envelope, peek_request_id
from visionpipe.metrics import Metrics
from visionpipe.settings import Settings

if TYPE_CHECKING:
    from visionpipe.services.runtime.budgets import Budgets
    from visionpipe.services.runtime.stage import Expired, Outcome


class Verdict(Enum):
    WORK = "work"
    DONE = "done"
    DEAD = "dead"
    EXPIRED = "expired"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    SKIP = "skip"


# Verdicts whose delivery the worker acks: the message needs nothing more from anyone.
ACKED = frozenset({Verdict.DONE, Verdict.DEAD, Verdict.EXPIRED, Verdict.DUPLICATE})


@dataclass(frozen=True)
class StageContext:
    """What a policy may know of the stage it runs in."""

    stage: str
    input: str
    output: str
    dead_letter: str
    group: str
    consumer: str
    broker: Broker
    settings: Settings
    metrics: Metrics
    results: str = ""  # where answers go, including deadline_exceeded from any stage
    budgets: Budgets | None = None  # the stage's part of each request's deadline

    @classmethod
    def of(
        cls, stage: str, broker: Broker, settings: Settings, metrics: Metrics, budgets: Budgets | None = None
    ) -> StageContext:
        """The context of ``stage`` as the topology names its streams and group."""
        return cls(
            stage=stage,
            input=topology.input_stream(stage, settings),
            output=topology.output_stream(stage, settings),
            dead_letter=settings.streams.name("dead_letter"),
            group=topology.group(stage, settings),
            consumer=f"{settings.service.consumer}-{stage}",
            broker=broker,
            settings=settings,
            metrics=metrics,
            results=settings.streams.name("results"),
            budgets=budgets,
        )


@dataclass
class Item:
    delivery: Delivery
    envelope: Envelope | None = None
    verdict: Verdict = Verdict.WORK
    reason: str | None = None  # why it was dead-lettered
    kind: str = BAD_INPUT  # what kind of dead letter: bad_input, or gave_up (the bound on attempts)
    outcome: Outcome | None = None
    expired: Expired | None = None  # why it is answered deadline_exceeded
    outputs: list[Output] = field(default_factory=list)  # published when the item is settled, with its ack
    once: str | None = None  # the broker's key for "this input is settled": a second settle publishes nothing

    def kill(self, reason: str, kind: str = BAD_INPUT) -> None:
        self.verdict, self.reason, self.kind = Verdict.DEAD, reason, kind

    def expire(self, expired: Expired) -> None:
        self.verdict, self.expired, self.reason = Verdict.EXPIRED, expired, str(expired)

    @property
    def request_id(self) -> str | None:
        if self.envelope is not None:
            return self.envelope.request_id
        return peek_request_id(self.delivery.data)


class Middleware:
    """Every hook does nothing; a policy overrides the ones it needs."""

    def on_consume(self, ctx: StageContext, items: Sequence[Item]) -> None:
        """A consumed batch, every delivery in it, before any is admitted."""

    def admit(self, ctx: StageContext, item: Item) -> None:
        """A decoded delivery before any work; may set a verdict other than ``WORK``."""

    def on_outcome(self, ctx: StageContext, item: Item) -> None:
        """A processed item, with its outcome and the verdict it led to (which a policy may still change)."""

    async def before_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        """Verdicts are final; a policy may add to ``item.outputs`` and set ``item.once`` before the settle."""

    def after_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        """``items`` whose verdict is acked are settled: their outputs published and their inputs acked."""

    def on_release(self, ctx: StageContext, items: Sequence[Item]) -> None:
        """Work on ``items`` is over here: settled, failed, or cancelled by a shutdown."""


class Chain:
    """The stage's middleware, fired in order on the way in and in reverse on the way out."""

    def __init__(self, ctx: StageContext, middleware: Sequence[Middleware]) -> None:
        self.ctx = ctx
        self.entering = list(middleware)
        self.leaving = self.entering[::-1]

    def on_consume(self, items: Sequence[Item]) -> None:
        for m in self.entering:
            m.on_consume(self.ctx, items)

    def admit(self, item: Item) -> None:
        """Each policy looks in turn; the first that decides (a verdict other than ``WORK``) ends the look."""
        for m in self.entering:
            m.admit(self.ctx, item)
            if item.verdict is not Verdict.WORK:
                return

    def on_outcome(self, item: Item) -> None:
        for m in self.leaving:
            m.on_outcome(self.ctx, item)

    async def before_ack(self, items: Sequence[Item]) -> None:
        for m in self.leaving:
            await m.before_ack(self.ctx, items)

    def after_ack(self, items: Sequence[Item]) -> None:
        for m in self.leaving:
            m.after_ack(self.ctx, items)

    def on_release(self, items: Sequence[Item]) -> None:
        for m in self.leaving:
            m.on_release(self.ctx, items)
