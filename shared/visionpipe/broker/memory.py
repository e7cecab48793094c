"""In-process broker with the same semantics as Redis Streams.

It is the embedded default of ``visionpipe run`` and of fast tests, so it
keeps pending entries, delivery counts, reclaim by idle time and backlog
exactly as the server backends do: a pipeline that works here behaves the
same on Redis. All ``MemoryBroker`` objects with the same URL in one process
share one store, the way clients of one server share it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from visionpipe.broker.base import Backlog, Broker, Delivery


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
    entries: dict[int, tuple[str | None, bytes]] = field(default_factory=dict)
    next_seq: int = 1
    groups: dict[str, _Group] = field(default_factory=dict)


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: dict[str, _Stream] = {}
        self.waiters: set[asyncio.Future[None]] = set()

    def stream(self, name: str) -> _Stream:
        return self.streams.setdefault(name, _Stream())

    def wake(self) -> None:
        for fut in list(self.waiters):
            fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def _store_for(url: str) -> _Store:
    with _STORES_LOCK:
        return _STORES.setdefault(url, _Store())


class MemoryBroker(Broker):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._store = _store_for(url)

    async def ensure(self, stream: str, group: str | None = None) -> None:
        with self._store.lock:
            s = self._store.stream(stream)
            if group is not None:
                s.groups.setdefault(group, _Group())

    async def publish(self, stream: str, messages: Sequence[bytes], keys: Sequence[str | None] | None = None) -> None:
        keys = keys if keys is not None else [None] * len(messages)
        if len(keys) != len(messages):
            raise ValueError("keys and messages differ in length")
        with self._store.lock:
            s = self._store.stream(stream)
            for key, data in zip(keys, messages, strict=True):
                s.entries[s.next_seq] = (key, bytes(data))
                s.next_seq += 1
        self._store.wake()

    async def consume(self, stream: str, group: str, consumer: str, count: int, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self._take_new(stream, group, consumer, count)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._store.waiters.add(fut)
            try:
                # Re-check after registering: a publish between the take and the add would be missed.
                got = self._take_new(stream, group, consumer, count)
                if got:
                    return got
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return []
            finally:
                self._store.waiters.discard(fut)

    def _take_new(self, stream: str, group: str, consumer: str, count: int) -> list[Delivery]:
        now = time.monotonic()
        with self._store.lock:
            s = self._store.stream(stream)
            g = s.groups.get(group)
            if g is None:
                raise KeyError(f"no group {group!r} on stream {stream!r}; call ensure() first")
            out: list[Delivery] = []
            for seq in range(g.last_delivered + 1, s.next_seq):
                if len(out) >= count:
                    break
                entry = s.entries.get(seq)
                g.last_delivered = seq
                if entry is None:  # deleted after every group acked it
                    continue
                g.pending[seq] = _Pending(consumer, now, 1)
                out.append(Delivery(stream, str(seq), entry[1], entry[0], 1))
            return out

    async def ack(self, stream: str, group: str, deliveries: Sequence[Delivery]) -> None:
        with self._store.lock:
            s = self._store.stream(stream)
            g = s.groups.get(group)
            if g is None:
                return
            for d in deliveries:
                seq = int(d.id)
                g.pending.pop(seq, None)
                # Delete once no group still needs the entry: bounded by acks, never by length.
                if all(seq <= other.last_delivered and seq not in other.pending for other in s.groups.values()):
                    s.entries.pop(seq, None)

    async def reclaim(self, stream: str, group: str, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        now = time.monotonic()
        with self._store.lock:
            s = self._store.stream(stream)
            g = s.groups.get(group)
            if g is None:
                return []
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
                out.append(Delivery(stream, str(seq), entry[1], entry[0], p.attempts))
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

    async def peek(self, stream: str, count: int) -> list[Delivery]:
        with self._store.lock:
            s = self._store.stream(stream)
            return [Delivery(stream, str(seq), data, key) for seq, (key, data) in sorted(s.entries.items())[:count]]

    async def ping(self) -> bool:
        return True

    async def delete(self, stream: str) -> None:
        with self._store.lock:
            self._store.streams.pop(stream, None)

    async def close(self) -> None:
        return None
