"""The hooks a per-message policy may implement, and the item they look at.

An :class:`Item` is one delivery on its way through a worker. Its
:class:`Verdict` starts as ``WORK`` and ends as one of: ``DONE`` (its output
is published), ``DEAD`` (dead-lettered with ``reason``), ``DUPLICATE``
(already done: acked without work), ``FAILED`` (a transient failure: left
pending for redelivery) or ``SKIP`` (the same request is in progress here:
left alone, neither worked on nor acked).

Hook order for one consumed batch::

    on_consume (the whole batch) -> admit (each item, until one middleware decides)
    -> the stage works -> on_outcome (each processed item) -> before_ack
    -> settle (outputs published and inputs acked in one step) -> after_ack
    -> on_release (every item but the skipped)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from visionpipe.broker import Delivery, Output
from visionpipe.envelope import Envelope, peek_request_id

if TYPE_CHECKING:
    from visionpipe.services.stage import Outcome
    from visionpipe.services.worker import Worker


class Verdict(Enum):
    WORK = "work"
    DONE = "done"
    DEAD = "dead"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    SKIP = "skip"


# Verdicts whose delivery the worker acks: the message needs nothing more from anyone.
ACKED = frozenset({Verdict.DONE, Verdict.DEAD, Verdict.DUPLICATE})


@dataclass
class Item:
    delivery: Delivery
    envelope: Envelope | None = None
    verdict: Verdict = Verdict.WORK
    reason: str | None = None  # why it was dead-lettered
    outcome: Outcome | None = None
    outputs: list[Output] = field(default_factory=list)  # published when the item is settled, with its ack
    once: str | None = None  # the broker's key for "this input is settled": a second settle publishes nothing

    def kill(self, reason: str) -> None:
        self.verdict, self.reason = Verdict.DEAD, reason

    @property
    def request_id(self) -> str | None:
        if self.envelope is not None:
            return self.envelope.request_id
        return peek_request_id(self.delivery.data)


class Middleware:
    """Every hook does nothing; a policy overrides the ones it needs."""

    def on_consume(self, worker: Worker, items: Sequence[Item]) -> None:
        """A consumed batch, every delivery in it, before any is admitted."""

    def admit(self, worker: Worker, item: Item) -> None:
        """A decoded delivery before any work; may set a verdict other than ``WORK``."""

    def on_outcome(self, worker: Worker, item: Item) -> None:
        """A processed item, with its outcome and the verdict it led to."""

    async def before_ack(self, worker: Worker, items: Sequence[Item]) -> None:
        """Verdicts are final; a policy may add to ``item.outputs`` and set ``item.once`` before the settle."""

    def after_ack(self, worker: Worker, items: Sequence[Item]) -> None:
        """``items`` whose verdict is acked are settled: their outputs published and their inputs acked."""

    def on_release(self, worker: Worker, items: Sequence[Item]) -> None:
        """Work on ``items`` is over here: settled, failed, or cancelled by a shutdown."""
