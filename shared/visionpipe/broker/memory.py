"""In-process broker with the same semantics as Redis Streams.

It is the embedded default of ``visionpipe run`` and of fast tests, so it
keeps pending entries, delivery counts, reclaim by idle time and backlog
exactly as the server backends do: a pipeline that works here behaves the
same on Redis. All ``MemoryBroker`` objects with the same URL in one process
share one store, the way clients of one server share it.

It carries messages by reference (``by_reference``): an envelope a stage
publishes is stored as the object, with read-only arrays, and each delivery
hands out the reader's own :meth:`~visionpipe.broker.base.InProcess.share` of
it, so no stage of the process encodes, copies or decodes what it passes on,
and a redelivery sees the message as it was published. Bytes stay bytes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from visionpipe.broker.base import Backlog, Broker, BrokerStateLost, Delivery, Payload, Retention, Room, Settled

# The settings' default (broker.dedupe_ttl_s), for a MemoryBroker made without settings.
ONCE_TTL_S = 600.0


@dataclass
class _Pending:
    consumer: str
    since: float  # monotonic seconds of the last delivery
    attempts: int


@dataclass
class _Group:
    last_delivered: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    entries: dict[int, tuple[str | None, Payload]] = field(default_factory=dict)
    next_seq: int = 1
    groups: dict[str, _Group] = field(default_factory=dict)
    born: dict[int, float] = field(default_factory=dict)  # wall-clock s of each entry's append (retention, trim_older)


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: dict[str, _Stream] = {}
        # Consumers waiting for entries, per stream: a publish wakes only those of the streams it wrote.
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        # Settled inputs' keys -> monotonic expiry; one TTL for all, so insertion order is expiry order.
        self.once: OrderedDict[str, float] = OrderedDict()
        self.retained: dict[str, Retention] = {}

    def stream(self, name: str) -> _Stream:
        return self.streams.setdefault(name, _Stream())

    def append(self, name: str, data: Payload, key: str | None) -> None:
        s = self.stream(name)
        s.entries[s.next_seq] = (key, bytes(data) if isinstance(data, bytearray | memoryview) else data)
        s.born[s.next_seq] = time.time()
        rule = self.retained.get(name)
        s.next_seq += 1
        if rule is not None:
            self.retain(s, rule)

    def retain(self, s: _Stream, rule: Retention) -> None:
        """Drop the oldest entries past the retention's age, then beyond its count, then its bytes."""
        cutoff, held = time.time() - rule.max_age_s, sum(_weight(data) for _, data in s.entries.values())
        for seq in list(s.entries):
            if s.born.get(seq, 0.0) > cutoff and len(s.entries) <= rule.max_count and held <= rule.max_bytes:
                return
            held -= _weight(s.entries.pop(seq)[1])
            s.born.pop(seq, None)

    def first_settle(self, once: str, ttl_s: float) -> bool:
        """Record ``once`` as settled; False when it already was (and has not expired)."""
        now = time.monotonic()
        while self.once and next(iter(self.once.values())) <= now:
            self.once.popitem(last=False)
        if once in self.once:
            return False
        self.once[once] = now + ttl_s
        return True

    def ack(self, stream: str, group: str, seqs: Sequence[int]) -> None:
        s = self.stream(stream)
        g = s.groups.get(group)
        if g is None:
            return
        retained = stream in self.retained  # kept by its retention, whoever acks
        for seq in seqs:
            g.pending.pop(seq, None)
            # Delete once no group still needs the entry: bounded by acks, never by length.
            if not retained and all(
                seq <= other.last_delivered and seq not in other.pending for other in s.groups.values()
            ):
                s.entries.pop(seq, None)
                s.born.pop(seq, None)

    def held_bytes(self, stream: str) -> int:
        return sum(_weight(data) for _key, data in self.stream(stream).entries.values())

    def wake(self, streams: Iterable[str]) -> None:
        """Wake the consumers of ``streams``: at once on this thread's loop, through its self-pipe on another's."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for name in set(streams):
            for fut in list(self.waiters.get(name, ())):
                if fut.get_loop() is here:
                    _resolve(fut)
                else:
                    fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _weight(data: Payload) -> int:
    return len(data) if isinstance(data, bytes) else data.nbytes


def _handed(data: Payload) -> Payload:
    """What one delivery hands out: the bytes, or the reader's own share of an object."""
    return data if isinstance(data, bytes) else data.share()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def _store_for(url: str) -> _Store:
    with _STORES_LOCK:
        return _STORES.setdefault(url, _Store())


def _lost(stream: str, group: str) -> BrokerStateLost:
    return BrokerStateLost(f"no group {group!r} on stream {stream!r}: deleted, or never made by ensure()", stream)


class MemoryBroker(Broker):
    by_reference = True

    def __init__(
        self, url: str = "memory://", once_ttl_s: float = ONCE_TTL_S, retained: Mapping[str, Retention] | None = None
    ) -> None:
        """``retained``: streams kept by retention, not acks (for every broker object on this URL's store)."""
        self.url = url
        self.once_ttl_s = once_ttl_s
        self._store = _store_for(url)
        with self._store.lock:
            self._store.retained.update(retained or {})

    async def ensure(self, stream: str, group: str | None = None) -> None:
        with self._store.lock:
            s = self._store.stream(stream)
            if group is not None:
                s.groups.setdefault(group, _Group())

    async def publish(self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None] | None = None) -> None:
        keys = keys if keys is not None else [None] * len(messages)
        if len(keys) != len(messages):
            raise ValueError("keys and messages differ in length")
        with self._store.lock:
            for key, data in zip(keys, messages, strict=True):
                self._store.append(stream, data, key)
        self._store.wake([stream])

    async def publish_if_room(
        self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None], room: Room
    ) -> dict[str, int] | None:
        if len(keys) != len(messages):
            raise ValueError("keys and messages differ in length")
        with self._store.lock:
            held = {name: self._store.held_bytes(name) for name in room.streams}
            if sum(held.values()) >= room.max_bytes:
                return held
            for key, data in zip(keys, messages, strict=True):
                self._store.append(stream, data, key)
        self._store.wake([stream])
        return None

    async def settle(self, stream: str, group: str, settled: Sequence[Settled]) -> int:
        duplicates = 0
        with self._store.lock:
            for item in settled:
                if item.once is not None and not self._store.first_settle(item.once, self.once_ttl_s):
                    duplicates += 1
                    continue
                for out in item.outputs:
                    self._store.append(out.stream, out.data, out.key)
            self._store.ack(stream, group, [int(item.delivery.id) for item in settled])
        self._store.wake(out.stream for item in settled for out in item.outputs)
        return duplicates

    async def touch(self, stream: str, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        with self._store.lock:
            g = self._store.stream(stream).groups.get(group)
            if g is None:
                return
            for d in deliveries:
                p = g.pending.get(int(d.id))
                if p is not None and p.consumer == consumer:
                    p.since = now

    async def consume(self, stream: str, group: str, consumer: str, count: int, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self._take_new(stream, group, consumer, count)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting = self._store.waiters.setdefault(stream, set())
            waiting.add(fut)
            try:
                # Re-check after registering: a publish between the take and the add would be missed.
                got = self._take_new(stream, group, consumer, count)
                if got:
                    return got
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return []
            finally:
                waiting.discard(fut)

    def _take_new(self, stream: str, group: str, consumer: str, count: int) -> list[Delivery]:
        now = time.monotonic()
        with self._store.lock:
            s = self._store.stream(stream)
            g = s.groups.get(group)
            if g is None:
                raise _lost(stream, group)
            out: list[Delivery] = []
            for seq in range(g.last_delivered + 1, s.next_seq):
                if len(out) >= count:
                    break
                entry = s.entries.get(seq)
                g.last_delivered = seq
                if entry is None:  # deleted after every group acked it
                    continue
                g.pending[seq] = _Pending(consumer, now, 1)
                out.append(Delivery(stream, str(seq), _handed(entry[1]), entry[0], 1))
            return out

    async def ack(self, stream: str, group: str, deliveries: Sequence[Delivery]) -> None:
        with self._store.lock:
            self._store.ack(stream, group, [int(d.id) for d in deliveries])

    async def reclaim(self, stream: str, group: str, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        now = time.monotonic()
        with self._store.lock:
            s = self._store.stream(stream)
            g = s.groups.get(group)
            if g is None:
                raise _lost(stream, group)
            out: list[Delivery] = []
            for seq, p in sorted(g.pending.items()):
                if len(out) >= count:
                    break
                if now - p.since < min_idle_s:
                    continue
                entry = s.entries.get(seq)
                if entry is None:
                    g.pending.pop(seq)
                    continue
                p.consumer, p.since, p.attempts = consumer, now, p.attempts + 1
                out.append(Delivery(stream, str(seq), _handed(entry[1]), entry[0], p.attempts))
            return out

    async def backlog(self, stream: str, group: str) -> Backlog:
        with self._store.lock:
            s = self._store.stream(stream)
            g = s.groups.get(group)
            if g is None:
                return Backlog(pending=0, lag=len(s.entries))
            lag = sum(1 for seq in s.entries if seq > g.last_delivered)
            return Backlog(pending=len(g.pending), lag=lag)

    async def length(self, stream: str) -> int:
        with self._store.lock:
            return len(self._store.stream(stream).entries)

    async def peek(self, stream: str, count: int, newest: bool = False) -> list[Delivery]:
        with self._store.lock:
            s = self._store.stream(stream)
            entries = sorted(s.entries.items())
            chosen = (entries[-count:] if count > 0 else []) if newest else entries[:count]
            return [Delivery(stream, str(seq), _handed(data), key) for seq, (key, data) in chosen]

    async def trim_older(self, stream: str, age_s: float) -> None:
        cutoff = time.time() - age_s
        with self._store.lock:
            s = self._store.stream(stream)
            for seq in [seq for seq, born in s.born.items() if born < cutoff]:
                s.entries.pop(seq, None)
                del s.born[seq]

    async def remove(self, stream: str, ids: Sequence[str]) -> bool:
        with self._store.lock:
            s = self._store.stream(stream)
            for entry_id in ids:
                s.entries.pop(int(entry_id), None)
                s.born.pop(int(entry_id), None)
        return True

    async def ping(self) -> bool:
        return True

    async def delete(self, stream: str) -> None:
        with self._store.lock:
            self._store.streams.pop(stream, None)

    async def close(self) -> None:
        return None
