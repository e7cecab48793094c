"""Kafka backend: a thin layer over confluent-kafka, run in a thread pool.

Mapping of the contract onto Kafka:

* publish: produce with ``acks=all`` and idempotence, then wait for every
  delivery report, so "published" means the brokers have it;
* consume: one subscribed ``Consumer`` per (stream, group, consumer name); a
  group member owns whole partitions, so a delivery goes to one member;
* ack: commits are per partition and cumulative, so each member tracks its
  deliveries and commits, synchronously, up to the first one not yet acked —
  acking out of order never commits past unfinished work;
* reclaim: a dead member's partitions move to the living by rebalance
  (cooperative-sticky: a scale step moves only the partitions that change
  owner), and they read again from the committed offset; ``reclaim`` hands out
  again what a living member of this process left unacked (a failed batch), as
  Redis's XAUTOCLAIM would;
* attempts: counted in the group's attempts topic (``kafka_attempts.py``), so a message
  that kills its stage is dead-lettered after ``limits.max_retries``, not blocking its partition;
* settle: a delivery's outputs wait in its member until every delivery below it
  in its partition is settled too; then the prefix's outputs are published and
  its offsets committed. Outputs of a delivery no longer held here (settled, or
  its partition revoked: the new owner redoes it) are dropped. Between that
  publish and commit a kill -9 can double an output, unless
  ``broker.kafka_transactions`` makes them one transaction (``kafka_txn.py``;
  off by default: Tansu, the test broker, cannot recover a killed producer's);
* backlog: end offset − committed offset, summed over partitions.

confluent-kafka blocks, so every call runs in this broker's own thread pool and
the event loop stays free. ``Consumer.consume(n, timeout)`` waits for *n*
messages or the whole timeout, which at low rates is pure added latency; we
``poll`` for the first message and then take what is already fetched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from visionpipe.broker.base import (
    Backlog,
    Broker,
    BrokerError,
    BrokerStateLost,
    Delivery,
    Output,
    Payload,
    Settled,
    wire,
)
from visionpipe.broker.kafka_admin import TopicAdmin, produce
from visionpipe.broker.kafka_attempts import AttemptLedger, attempts_topic
from visionpipe.broker.kafka_common import position, to_delivery
from visionpipe.broker.kafka_config import client_configs
from visionpipe.broker.kafka_member import Member
from visionpipe.broker.kafka_offsets import Offsets
from visionpipe.broker.kafka_txn import Transactions
from visionpipe.broker.retry import with_retries
from visionpipe.broker.security import BrokerAuthError, plaintext_password_warning, redact_url

if TYPE_CHECKING:
    from visionpipe.settings import Settings

log = logging.getLogger("visionpipe.broker.kafka")
T = TypeVar("T")

# Blocking consumes each hold a thread for up to their timeout; publishes and acks must not queue behind them.
POOL_THREADS = 32


def kafka_group_id(stream: str, group: str) -> str:
    """The Kafka group.id of ``group`` on ``stream`` (what KEDA's Kafka scaler must name).

    Our groups belong to one stream, as Redis groups do; Kafka groups span topics, and members of one group on
    different topics rebalance each other. Naming it after both keeps stages (and pipelines' prefixes) apart.
    """
    return f"{stream}.{group}"


def _pop_members(
    members: dict[tuple[str, str, str], Member],
    owner: dict[tuple[str, str, int], Member],
    match: Callable[[tuple[str, str, str]], bool],
) -> list[Member]:
    """Take the members whose (stream, group, consumer) ``match`` out of both maps (under the broker's lock)."""
    gone = [members.pop(k) for k in [k for k in members if match(k)]]
    for owned in [k for k, m in owner.items() if m in gone]:
        del owner[owned]
    return gone


class KafkaBroker(Broker):
    # Attempts are counted only where a crash could be blamed on a delivery (see kafka_member.py), not per redelivery.
    tracks_attempts = False

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self._settings = settings
        self._common, producer_conf, self._consumer_conf = client_configs(url, settings)
        self._pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="kafka")
        self._producer = Producer({**self._common, **producer_conf})
        txns = settings.broker.kafka_transactions
        self._txns = Transactions({**self._common, **producer_conf}, url) if txns else None
        self._admin = TopicAdmin(AdminClient(self._common), url, settings)
        self._members: dict[tuple[str, str, str], Member] = {}
        self._offsets = Offsets({**self._common, **self._consumer_conf}, url, self._admin.partitions)
        self._owner: dict[tuple[str, str, int], Member] = {}  # (stream, group, partition) -> member that delivered
        self._settle_locks: dict[int, asyncio.Lock] = {}  # id(member) -> its settles, one at a time
        self._lock = threading.Lock()
        self._topics: set[str] = set()

    @classmethod
    async def connect(cls, url: str, settings: Settings) -> KafkaBroker:
        warning = plaintext_password_warning(url, settings)
        if warning:
            log.warning(warning)
        broker = cls(url, settings)
        try:
            await with_retries(broker._metadata_or_raise, url, settings)
        except BaseException:
            await broker.close()
            raise
        log.info("connected", extra={"url": redact_url(url)})
        return broker

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    async def _metadata_or_raise(self) -> None:
        await self._run(self._admin.topics)

    async def ensure(self, stream: str, group: str | None = None) -> None:
        if stream not in self._topics:
            await self._run(self._admin.create, stream)
            self._topics.add(stream)
        # A group needs nothing up front: it exists once a member joins, and reads from the start. Its attempts
        # topic does: one partition per partition of the stream.
        if group is not None:
            ledger = attempts_topic(kafka_group_id(stream, group))
            if ledger not in self._topics:
                partitions = (await self._run(self._admin.topics)).get(stream, self._settings.broker.kafka_partitions)
                await self._run(self._admin.create, ledger, partitions)
                self._topics.add(ledger)

    async def publish(self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None] | None = None) -> None:
        keys = keys if keys is not None else [None] * len(messages)
        if len(keys) != len(messages):
            raise ValueError("keys and messages differ in length")
        if messages:
            await self._run(produce, self._producer, self._admin, stream, [wire(m) for m in messages], keys)

    def _member(self, stream: str, group: str, consumer: str) -> Member:
        with self._lock:
            member = self._members.get((stream, group, consumer))
            if member is None:
                group_id = kafka_group_id(stream, group)
                conf = {**self._common, **self._consumer_conf, "group.id": group_id}
                conf["client.id"] = consumer
                reader = {**self._common, **self._consumer_conf, "group.id": f"{group_id}.attempts-reader"}
                ledger = AttemptLedger(attempts_topic(group_id), self._producer, reader, self.url)
                window = self._settings.broker.kafka_careful_window
                member = self._members[(stream, group, consumer)] = Member(conf, stream, group, ledger, window)
            return member

    async def prepare(self, stream: str, group: str, consumer: str) -> None:
        # Subscribing starts the join in librdkafka's threads; no poll needed until the first consume.
        member = await self._run(self._member, stream, group, consumer)
        if self._txns is not None:  # fence a predecessor under this name now: its open transaction is aborted
            await self._run(self._txns.producer, member)

    async def consume(self, stream: str, group: str, consumer: str, count: int, timeout_s: float) -> list[Delivery]:
        member = self._member(stream, group, consumer)
        abandoned = threading.Event()
        fut = self._pool.submit(member.poll, count, timeout_s, self.url, abandoned)
        try:
            msgs = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            # Still polling: it rewinds by itself. Already returned: give its messages back here.
            abandoned.set()
            fut.add_done_callback(member.rewind_if_delivered)
            raise
        except BrokerStateLost:
            self._topics.discard(stream)  # so that ensure() makes it again
            raise
        with self._lock:
            for m in msgs:
                self._owner[(stream, group, position(m)[0])] = member
        return [to_delivery(stream, m, member.attempts(m)) for m in msgs]

    def _holder(self, stream: str, group: str, d: Delivery) -> tuple[Member | None, int, int]:
        p, _, o = d.id.partition(":")
        with self._lock:
            return self._owner.get((stream, group, int(p))), int(p), int(o)

    async def settle(self, stream: str, group: str, settled: Sequence[Settled]) -> int:
        by_member: dict[int, tuple[Member, list[tuple[int, int, tuple[Output, ...]]]]] = {}
        dropped = 0
        for item in settled:
            member, p, o = self._holder(stream, group, item.delivery)
            if member is None:
                dropped += bool(item.outputs)
                continue
            by_member.setdefault(id(member), (member, []))[1].append((p, o, item.outputs))
        for key, (member, items) in by_member.items():
            # One settle at a time per member: two would both find the same prefix and publish it twice.
            async with self._settle_locks.setdefault(key, asyncio.Lock()):
                dropped += member.mark(items)
                outputs, commits = member.committable()
                by_stream: dict[str, list[Output]] = {}
                for out in outputs:
                    by_stream.setdefault(out.stream, []).append(out)
                if self._txns is not None and outputs:
                    await self._run(self._txns.settle, member, outputs, commits)
                    continue
                for name, outs in by_stream.items():
                    await self.publish(name, [o.data for o in outs], [o.key for o in outs])
                await self._run(member.commit, commits)
        return dropped

    async def touch(self, stream: str, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        by_member: dict[int, tuple[Member, list[tuple[int, int]]]] = {}
        for d in deliveries:
            member, p, o = self._holder(stream, group, d)
            if member is not None:
                by_member.setdefault(id(member), (member, []))[1].append((p, o))
        for member, offsets in by_member.values():
            member.touch(offsets)

    async def ack(self, stream: str, group: str, deliveries: Sequence[Delivery]) -> None:
        await self.settle(stream, group, [Settled(d) for d in deliveries])

    async def reclaim(self, stream: str, group: str, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        """This process's deliveries left unacked (a failed batch); a dead member's partitions move by rebalance."""
        with self._lock:
            members = [m for (s, g, _), m in self._members.items() if s == stream and g == group]
        out: list[Delivery] = []
        for member in members:
            out += [to_delivery(stream, m, n) for m, n in member.take_idle(min_idle_s, count - len(out))]
        return out

    async def backlog(self, stream: str, group: str) -> Backlog:
        total = await self._run(self._offsets.unfinished, stream, kafka_group_id(stream, group))
        with self._lock:
            pending = sum(m.pending() for (s, g, _), m in self._members.items() if s == stream and g == group)
        pending = min(pending, total)
        return Backlog(pending=pending, lag=total - pending)

    async def length(self, stream: str) -> int:
        return await self._run(self._offsets.length, stream)

    async def peek(self, stream: str, count: int, newest: bool = False) -> list[Delivery]:
        return [to_delivery(stream, m) for m in await self._run(self._offsets.peek, stream, count, newest)]

    async def ping(self) -> bool:
        try:
            await self._run(self._admin.topics)
        except (BrokerError, BrokerAuthError, KafkaException):
            return False
        return True

    async def rejoin(self, stream: str, group: str, consumer: str) -> None:
        # Closed, it leaves; the new member joins afresh, and its producer (same transactional.id) fences the old.
        with self._lock:
            gone = _pop_members(self._members, self._owner, lambda key: key == (stream, group, consumer))
        for member in gone:
            await self._run(member.close)
            if self._txns is not None:
                self._txns.drop(member)
        await self.prepare(stream, group, consumer)

    async def delete(self, stream: str) -> None:
        with self._lock:
            members = _pop_members(self._members, self._owner, lambda key: key[0] == stream)
        for member in members:
            await self._run(member.close)
        await self._run(self._admin.delete, stream)
        await self._run(self._offsets.reset)
        self._topics.discard(stream)

    async def close(self) -> None:
        with self._lock:
            closers = [m.close for m in self._members.values()] + self._offsets.closers()
            self._members.clear()
            self._owner.clear()
        loop = asyncio.get_running_loop()
        done: list[Future[Any]] = [self._pool.submit(close) for close in closers]
        done.append(self._pool.submit(self._producer.flush, 5.0))
        if self._txns is not None:
            done.append(self._pool.submit(self._txns.close))
        await asyncio.gather(*(asyncio.wrap_future(f, loop=loop) for f in done), return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
