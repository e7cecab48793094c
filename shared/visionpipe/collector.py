"""Reading what comes out of the pipeline: results, early answers and dead letters, in a consumer group of its own.

``visionpipe run``, the load generator, the HTTP gateway and the tests all
need the same thing — every result and every dead letter, decoded, handed to
them, acked only after they have it (at least once), and foreign or broken
entries counted rather than crashing the reader — so it is written once.
Each reader names its own group, so several readers each see everything.

The results stream carries two kinds of answer: a result, and a request answered ``deadline_exceeded`` by the
stage that knew it could no longer make it (:class:`~visionpipe.hops.Expiry`). They are handed over apart
(``Collected.results`` and ``Collected.expired``), so a reader that knows only results never takes an expiry
for one.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from visionpipe.broker import Broker, BrokerError, BrokerStateLost, DeadLetter, Delivery, wire
from visionpipe.envelope import Envelope, EnvelopeError
from visionpipe.hops import Expiry
from visionpipe.settings import Settings

log = logging.getLogger(__name__)

# Entries taken per consume: a burst of results is read in a few calls, and one call's decode stays short.
READ_COUNT = 256


@dataclass
class Collected:
    """One poll's worth, with when it was read (monotonic and wall clock, ns)."""

    results: list[Envelope] = field(default_factory=list)
    expired: list[tuple[Envelope, Expiry]] = field(default_factory=list)  # answered deadline_exceeded
    dead: list[DeadLetter] = field(default_factory=list)
    undecodable: int = 0  # entries that were neither: another writer's, or damaged
    mono_ns: int = 0
    wall_ns: int = 0


Sink = Callable[[Collected], None] | Callable[[Collected], Awaitable[None]]


class Collector:
    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        group: str,
        consumer: str | None = None,
        *,
        stream: str = "results",
        count: int = READ_COUNT,
    ) -> None:
        """``stream``: the StreamSettings key read as results (tests tap an inner stream the same way)."""
        self.broker, self.group, self.count = broker, group, count
        self.consumer = consumer or f"{group}-{uuid.uuid4().hex[:6]}"
        self.results_stream = settings.streams.name(stream)
        self.dead_stream = settings.streams.name("dead_letter")

    async def open(self) -> Collector:
        """Create the group on both streams (reading from their start) and join it (Kafka takes seconds)."""
        for stream in (self.results_stream, self.dead_stream):
            await self.broker.ensure(stream, self.group)
            await self.broker.prepare(stream, self.group, self.consumer)
        return self

    async def poll(self, timeout_s: float, sink: Sink | None = None) -> Collected:
        """Read what is there (waiting up to ``timeout_s`` for results), hand it to ``sink``, then ack it.

        Dead letters are read without waiting once results came, so neither stream delays the other.
        A broker that lost our group (restarted empty) gets it back, and this poll returns nothing. ``sink``
        may be a coroutine function (a reader that stores results elsewhere before they are acked).
        """
        got: list[Delivery] = []
        try:
            got = await self._consume(self.results_stream, timeout_s)
            dead = await self._consume(self.dead_stream, 0.0 if got else timeout_s)
        except BrokerStateLost as exc:
            log.error("the broker has lost the %s group (%s): making it again; what it held is gone", self.group, exc)
            await self.open()
            return Collected(mono_ns=time.monotonic_ns(), wall_ns=time.time_ns())
        except BrokerError:
            # Results already read are ours alone (pending at this consumer): a later read never hands them out
            # again, and only a reader that reclaims would find them. So they are handed over and acked first.
            if got:
                await self._settle(got, [], sink)
            raise
        return await self._settle(got, dead, sink)

    async def reclaim(self, min_idle_s: float, sink: Sink | None = None) -> Collected:
        """Take over what members of this group that died left unacked (readers that share one group)."""
        got = await self.broker.reclaim(self.results_stream, self.group, self.consumer, min_idle_s, self.count)
        dead = await self.broker.reclaim(self.dead_stream, self.group, self.consumer, min_idle_s, self.count)
        return await self._settle(got, dead, sink)

    async def _consume(self, stream: str, timeout_s: float) -> list[Delivery]:
        return await self.broker.consume(stream, self.group, self.consumer, self.count, timeout_s)

    async def _settle(self, got: list[Delivery], dead: list[Delivery], sink: Sink | None) -> Collected:
        batch = Collected(mono_ns=time.monotonic_ns(), wall_ns=time.time_ns())
        for d in got:
            try:
                env = Envelope.decode(d.data)
            except EnvelopeError:
                batch.undecodable += 1
                continue
            expiry = Expiry.of(env)
            if expiry is None:
                batch.results.append(env)
            else:
                batch.expired.append((env, expiry))
        for d in dead:
            try:
                batch.dead.append(DeadLetter.decode(wire(d.data)))
            except (ValueError, KeyError, TypeError, OverflowError):  # a foreign record: msgpack errors are ValueErrors
                batch.undecodable += 1
        if sink is not None:
            handed = sink(batch)
            if inspect.isawaitable(handed):
                await handed
        if got:
            await self.broker.ack(self.results_stream, self.group, got)
        if dead:
            await self.broker.ack(self.dead_stream, self.group, dead)
        return batch
