"""The seam between stages: a broker that holds the difference in their rates.

Every backend gives the same at-least-once contract, checked by one test
suite (``tests/broker``) run unchanged against each:

* ``publish`` returns only when the broker has the messages (durable as the
  backend allows), so a stage may then ack its input;
* ``consume`` hands a delivery to one member of a consumer group and keeps it
  *pending* until ``ack``; a delivery never acked is handed again, to another
  member, by ``reclaim`` (Redis, memory) or a group rebalance (Kafka);
* ``backlog`` counts what a group still has to do: pending plus not yet
  delivered. Streams are never trimmed by length: that would lose data;
* ``settle`` publishes a stage's outputs for its inputs and acks the inputs,
  each input's outputs at most once per idempotency key, in one step where
  the backend can (Redis: one script; memory: one lock; Kafka: with the
  commit that covers them, in one transaction where enabled), so a process
  killed between the two, a lost ack reply or a stolen delivery never doubles
  a result.

A message is bytes, except on the in-process broker (``by_reference``), which hands a stage's output envelope
to the next stage as the object itself — read-only arrays, each reader its own copy of the small maps — so
stages of one process never encode, copy or decode what they pass on. Redis and Kafka carry bytes only.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import msgpack

if TYPE_CHECKING:
    from visionpipe.settings import Settings


class InProcess(Protocol):
    """A message handed on by reference inside one process (an envelope): never serialised on the way."""

    @property
    def nbytes(self) -> int:
        """About what it would weigh encoded: what a broker counts it as holding."""
        ...

    def share(self) -> InProcess:
        """A reader's own copy of the parts a reader may change; the data itself is shared, read-only."""
        ...

    def encode(self) -> bytes:
        """Its bytes, for where it must leave the process (a dead letter, a server broker)."""
        ...


class Outgoing(Protocol):
    """What a producer publishes (an envelope): encoded for a server broker, frozen for the in-process one."""

    def encode(self) -> bytes: ...

    def frozen(self) -> InProcess: ...


Payload: TypeAlias = bytes | InProcess


def wire(message: Payload) -> bytes:
    """The bytes of ``message``: itself when it already is bytes, else its encoding."""
    return message if isinstance(message, bytes) else message.encode()


class BrokerError(RuntimeError):
    """Retryable: the broker is unreachable or timed out. Callers back off and retry."""


class BrokerUnreachable(BrokerError):
    """Nothing answered at the broker's address within the start-up deadline; the message says what to check."""


class BrokerStateLost(BrokerError):
    """A stream or consumer group this pipeline made is gone: the broker restarted empty, or someone deleted it.

    Retryable once the caller has made them again (``ensure``); whatever the broker held is lost with it.
    """

    def __init__(self, message: str, stream: str) -> None:
        super().__init__(message)
        self.stream = stream


class BrokerFull(BrokerError):
    """The broker refuses writes for want of memory (Redis ``maxmemory`` with ``noeviction``).

    Retryable once consumers have acked (and so freed) enough; ingress turns it into ``Backpressure``.
    """


@dataclass(frozen=True, slots=True)
class Delivery:
    stream: str
    id: str  # Redis entry id, Kafka "partition:offset", memory sequence number
    data: Payload  # bytes; an envelope of this process's own on the in-process broker
    key: str | None = None
    attempts: int = 1  # times this entry has been delivered, this one included, where the backend knows


@dataclass(frozen=True, slots=True)
class Output:
    """A message a stage publishes for one of its inputs."""

    stream: str
    data: Payload
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """One input a stage is done with: the outputs it led to (none for a duplicate), then its ack.

    ``once`` names the input's outcome: a second ``settle`` with the same key within
    ``broker.dedupe_ttl_s`` acks without publishing again. None: no such guard.
    """

    delivery: Delivery
    outputs: tuple[Output, ...] = ()
    once: str | None = None


@dataclass(frozen=True, slots=True)
class Room:
    """A bound on what ``streams`` may hold together before a producer is refused."""

    streams: tuple[str, ...]
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Retention:
    """What a stream keeps whoever reads it (the dead letters, for operators): acks never trim it; these do.

    The oldest entries go first: those older than ``max_age_s``, then beyond ``max_count``, then while the stream
    holds more than ``max_bytes``.
    """

    max_age_s: float
    max_count: int
    max_bytes: int


def retained_streams(settings: Settings) -> dict[str, Retention]:
    """The streams kept by retention instead of by acks: the dead letters, for operators, whoever else reads them."""
    s = settings.streams
    return {s.name("dead_letter"): Retention(s.dead_letter_max_age_s, s.dead_letter_max_count, s.dead_letter_max_bytes)}


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int  # delivered to a member of the group, not yet acked
    lag: int  # in the stream, not yet delivered to the group

    @property
    def total(self) -> int:
        return self.pending + self.lag


class Broker(ABC):
    """A stream broker seen by one process. Safe to share between tasks of one event loop."""

    url: str
    # Whether Delivery.attempts counts redeliveries (Redis, memory); Kafka keeps no per-message count.
    tracks_attempts: bool = True
    # Whether messages may be objects of this process, handed on by reference (the in-process broker).
    by_reference: bool = False

    wire = staticmethod(wire)

    def payload(self, item: Outgoing) -> Payload:
        """``item`` as this broker carries it: the object itself, frozen, in one process; else its encoding."""
        return item.frozen() if self.by_reference else item.encode()

    @abstractmethod
    async def ensure(self, stream: str, group: str | None = None) -> None:
        """Create the stream (and the group, reading from the start) if missing."""

    @abstractmethod
    async def publish(self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None] | None = None) -> None:
        """Append ``messages`` in order; entries with the same key keep their order."""

    async def prepare(self, stream: str, group: str, consumer: str) -> None:
        """Join ``group`` now, so the first ``consume`` does not wait for it.

        Only Kafka needs time for this (a group join takes seconds); a stage calls it
        before loading its model so the two overlap. Elsewhere it does nothing.
        """
        return None

    async def rejoin(self, stream: str, group: str, consumer: str) -> None:
        """Leave ``group`` and join it again as a new member: asked by a worker whose input has lag that does not
        go down while it gets nothing (its membership stuck). Only Kafka has memberships; elsewhere it does nothing.
        """
        return None

    @abstractmethod
    async def consume(self, stream: str, group: str, consumer: str, count: int, timeout_s: float) -> list[Delivery]:
        """Up to ``count`` new deliveries; waits at most ``timeout_s`` for the first one."""

    @abstractmethod
    async def ack(self, stream: str, group: str, deliveries: Sequence[Delivery]) -> None:
        """Mark deliveries done; only after their outputs are published."""

    @abstractmethod
    async def reclaim(self, stream: str, group: str, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        """Take over deliveries pending longer than ``min_idle_s`` at other (dead) members."""

    async def settle(self, stream: str, group: str, settled: Sequence[Settled]) -> int:
        """Publish each input's outputs unless its ``once`` key was settled before, then ack every input.

        Returns how many inputs were duplicates (acked, nothing published). This fallback
        publishes, then acks, with no guard; the backends override it with one atomic step.
        """
        by_stream: dict[str, list[Output]] = {}
        for s in settled:
            for out in s.outputs:
                by_stream.setdefault(out.stream, []).append(out)
        for name, outs in by_stream.items():
            await self.publish(name, [o.data for o in outs], [o.key for o in outs])
        await self.ack(stream, group, [s.delivery for s in settled])
        return 0

    async def touch(self, stream: str, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """Tell the broker ``consumer`` is still working on ``deliveries``, so ``reclaim`` leaves them alone.

        Redis resets their idle time; elsewhere a member's liveness is the group's business and this does nothing.
        """
        return None

    async def publish_if_room(
        self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None], room: Room
    ) -> dict[str, int] | None:
        """Publish only while the streams of ``room`` hold under its ``max_bytes``; check and publish in one step.

        Returns None once published, else the bytes each of those streams holds (nothing published).
        Backends that cannot say what they hold publish unconditionally.
        """
        await self.publish(stream, messages, keys)
        return None

    @abstractmethod
    async def backlog(self, stream: str, group: str) -> Backlog: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the broker answers; used by /readyz."""

    @abstractmethod
    async def delete(self, stream: str) -> None:
        """Remove a stream and its groups (tests and load-generator clean-up)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def length(self, stream: str) -> int:
        """Entries still stored in ``stream``; backends override where they can say."""
        raise NotImplementedError

    async def peek(self, stream: str, count: int, newest: bool = False) -> list[Delivery]:
        """The oldest ``count`` stored entries (``newest``: the newest, still oldest first), read outside any group
        (nothing becomes pending).

        For inspection, e.g. ``visionpipe dlq list``, and state every reader wants the latest of (``tail``);
        stages use ``consume``. Kafka reads each partition's ``count`` newest.
        """
        raise NotImplementedError

    async def tail(self, stream: str, count: int) -> list[Delivery]:
        """The newest ``count`` stored entries, oldest first (``peek`` from the end): for state every reader wants
        the latest of (stage heartbeats). Backends that cannot read a stream raise ``NotImplementedError``, and
        readers of such state go without it.
        """
        return await self.peek(stream, count, newest=True)

    async def remove(self, stream: str, ids: Sequence[str]) -> bool:
        """Delete these entries from ``stream`` (``visionpipe dlq replay``, once it moved them); False where the
        backend cannot delete single entries (Kafka: a consumer group's committed offset marks them instead)."""
        return False

    async def trim_older(self, stream: str, age_s: float) -> None:
        """Drop entries older than ``age_s`` from a stream no group of ours reads (a feed for outside readers).

        Retention by age, as Kafka topics have it: pipeline streams are never trimmed this way (acks bound
        them); a feed whose readers are not ours can only be bounded by how long it promises to keep entries.
        Kafka's topic retention does this by itself, so the default does nothing.
        """
        return None

    async def dead_letter(
        self,
        dlq: str,
        *,
        reason: str,
        data: Payload,
        stage: str,
        origin: str,
        request_id: str | None = None,
        kind: str = "",
    ) -> None:
        """Park a message that cannot be processed, with why, for inspection or replay."""
        record = DeadLetter(reason=reason, data=data, stage=stage, origin=origin, request_id=request_id, kind=kind)
        await self.publish(dlq, [record.encode()], [request_id])

    def __repr__(self) -> str:
        from visionpipe.broker.security import redact_url  # security imports settings; keep base import-light

        return f"{type(self).__name__}({redact_url(self.url)!r})"

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# What a dead letter is, for whoever answers its client: the input was refused (the client's to fix), the request
# ran out of time where it was, or the pipeline gave up on it after repeated failures (the operator's to look at).
BAD_INPUT, DEADLINE, GAVE_UP = "bad_input", "deadline", "gave_up"
KINDS = (BAD_INPUT, DEADLINE, GAVE_UP)


def infer_kind(reason: str) -> str:
    """The kind of a record written before records had one, from its reason's words."""
    if reason.startswith("gave up after"):
        return GAVE_UP
    if reason.startswith("deadline passed"):
        return DEADLINE
    return BAD_INPUT


@dataclass(frozen=True)
class DeadLetter:
    """An entry of the dead-letter stream: the original bytes, the reason, and its kind (one of ``KINDS``).

    ``kind`` empty is inferred from the reason; records without one (older writers) read the same way, and
    readers that do not know the field ignore it.
    """

    reason: str
    data: Payload  # what was dead-lettered; bytes once decoded from the stream
    stage: str
    origin: str  # stream the message came from; `visionpipe dlq replay` sends it back there
    request_id: str | None = None
    at_ns: int = field(default_factory=time.time_ns)
    kind: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            object.__setattr__(self, "kind", infer_kind(self.reason))

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "reason": self.reason,
            "data": wire(self.data),
            "stage": self.stage,
            "origin": self.origin,
            "id": self.request_id,
            "at": self.at_ns,
            "kind": self.kind,
        }
        return msgpack.packb(doc, use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetter:
        doc = msgpack.unpackb(raw, raw=False)
        # Entries on the stream are untrusted: bytes(n) of an integer ``data`` would allocate n bytes.
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), bytes):
            raise ValueError("not a dead-letter record: no bytes under 'data'")
        rid, kind = doc.get("id"), doc.get("kind")
        return cls(
            reason=str(doc["reason"]),
            data=doc["data"],
            stage=str(doc["stage"]),
            origin=str(doc["origin"]),
            request_id=rid if isinstance(rid, str) else None,
            at_ns=int(doc.get("at", 0)),
            kind=kind if isinstance(kind, str) else "",
        )
