"""Redis Streams backend: a thin layer over ``redis.asyncio``.

One stream per pipeline stream, one consumer group per stage. Each entry holds
two fields, ``d`` (the message) and ``k`` (its key, when given). Mapping of the
contract onto Redis:

* publish: pipelined ``XADD`` (never ``MAXLEN``: trimming by length loses data);
* consume: ``XREADGROUP ... >``, so the entry stays in the group's pending list;
* settle (and ack, a settle without outputs): one script (``settle.lua``) that
  ``XADD``s each input's outputs unless its once-key (``SET NX PX``) shows they
  were published already, ``XACK``s the inputs and ``XTRIM MINID``s up to the
  oldest entry some group still needs — memory is bounded by acks, not by length —
  except on a retained stream (the dead letters), kept by age, count and bytes;
* touch: ``XCLAIM … JUSTID`` to the consumer itself (``touch.lua``), which resets
  the idle time of entries still being worked on;
* reclaim: ``XAUTOCLAIM`` (entries idle at a dead consumer), then ``XPENDING``
  for their delivery counts, which the dead-letter policy reads;
* backlog: ``XINFO GROUPS`` pending + lag (Redis 7);
* publish_if_room: ``MEMORY USAGE`` of the counted streams and ``XADD`` in one
  script (``admit.lua``).

A missing group (``NOGROUP``: the server restarted without its data) raises
:class:`BrokerStateLost`; a write refused at ``maxmemory`` raises :class:`BrokerFull`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.connection import ConnectionPool, parse_url

from visionpipe.broker.base import (
    Backlog,
    Broker,
    BrokerError,
    BrokerFull,
    BrokerStateLost,
    Delivery,
    Payload,
    Retention,
    Room,
    Settled,
    retained_streams,
    wire,
)
from visionpipe.broker.retry import with_retries
from visionpipe.broker.security import (
    BrokerAuthError,
    credentials,
    plaintext_password_warning,
    redact_url,
    redis_tls_kwargs,
)

if TYPE_CHECKING:
    from visionpipe.settings import Settings

log = logging.getLogger("visionpipe.broker.redis")

DATA, KEY = b"d", b"k"
# Connecting is quick on a LAN; a host that does not answer in 5 s is down, and the retry loop takes over.
CONNECT_TIMEOUT_S = 5.0
# Keeps XACK's argument list (and the Lua stack in the settle script) well under Lua's 8000-slot limit.
ACK_CHUNK = 1000

# Server-side scripts; the keys and arguments of each are documented in its file's header.
_SCRIPTS = Path(__file__).parent
SETTLE = (_SCRIPTS / "settle.lua").read_text()
TOUCH = (_SCRIPTS / "touch.lua").read_text()
ADMIT = (_SCRIPTS / "admit.lua").read_text()


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """Map redis-py exceptions onto the broker's: retryable, auth (fatal), missing group."""
    try:
        yield
    except (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError) as exc:
        raise BrokerAuthError(f"redis {redact_url(url)} refused us: {exc}") from exc
    except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
        if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise BrokerAuthError(f"TLS to {redact_url(url)} failed: {exc}") from exc
        raise BrokerError(f"redis {redact_url(url)}: {exc}") from exc
    except rex.OutOfMemoryError as exc:
        raise BrokerFull(f"redis {redact_url(url)} is full: {exc}") from exc
    except rex.ResponseError as exc:
        if str(exc).startswith("NOGROUP"):
            raise BrokerStateLost(f"redis {redact_url(url)}: {exc}", _stream_in(str(exc))) from exc
        if str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            raise BrokerAuthError(f"redis {redact_url(url)} refused us: {exc}") from exc
        raise


def _stream_in(nogroup: str) -> str:
    """The stream a NOGROUP error names: "NOGROUP No such key 'vp.frames' or consumer group 'decode' …"."""
    parts = nogroup.split("'")
    return parts[1] if len(parts) > 1 else ""


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _delivery(stream: str, entry_id: bytes | str, fields: dict[bytes, bytes], attempts: int = 1) -> Delivery:
    key = fields.get(KEY)
    return Delivery(stream, _s(entry_id), fields.get(DATA, b""), key.decode() if key is not None else None, attempts)


def pool_kwargs(url: str, settings: Settings) -> dict[str, Any]:
    """Connection-pool arguments: the URL's, overridden by settings (credentials, TLS)."""
    kwargs: dict[str, Any] = dict(parse_url(url))
    username, password = credentials(url, settings)
    kwargs.pop("username", None)
    kwargs.pop("password", None)
    if username:
        kwargs["username"] = username
    if password is not None:
        kwargs["password"] = password
    kwargs.update(redis_tls_kwargs(url, settings))
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("socket_keepalive", True)
    kwargs.setdefault("client_name", "visionpipe")
    return kwargs


class RedisBroker(Broker):
    def __init__(
        self, url: str, client: aioredis.Redis, once_ttl_s: float, retained: Mapping[str, Retention] | None = None
    ) -> None:
        self.url = url
        self._r = client
        self._once_ttl_ms = max(1, int(once_ttl_s * 1000))
        self._retained = dict(retained or {})
        self._settle_script = client.register_script(SETTLE)
        self._touch_script = client.register_script(TOUCH)
        self._admit_script = client.register_script(ADMIT)

    @classmethod
    async def connect(cls, url: str, settings: Settings) -> RedisBroker:
        warning = plaintext_password_warning(url, settings)
        if warning:
            log.warning(warning)
        client = aioredis.Redis.from_pool(ConnectionPool(**pool_kwargs(url, settings)))
        broker = cls(url, client, settings.broker.dedupe_ttl_s, retained_streams(settings))

        async def attempt() -> None:
            with _errors(url):
                await client.ping()

        try:
            await with_retries(attempt, url, settings)
        except BaseException:
            await client.aclose()
            raise
        log.info("connected", extra={"url": redact_url(url)})
        return broker

    async def ensure(self, stream: str, group: str | None = None) -> None:
        if group is None:
            return  # XADD creates the stream; nothing reads it before a group exists
        with _errors(self.url):
            try:
                await self._r.xgroup_create(stream, group, id="0", mkstream=True)
            except rex.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def publish(self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None] | None = None) -> None:
        keys = keys if keys is not None else [None] * len(messages)
        if len(keys) != len(messages):
            raise ValueError("keys and messages differ in length")
        if not messages:
            return
        with _errors(self.url):
            async with self._r.pipeline(transaction=False) as pipe:
                for key, data in zip(keys, map(wire, messages), strict=True):
                    fields: dict[Any, Any] = {DATA: data} if key is None else {DATA: data, KEY: key}
                    pipe.xadd(stream, fields)
                await pipe.execute()

    async def consume(self, stream: str, group: str, consumer: str, count: int, timeout_s: float) -> list[Delivery]:
        # BLOCK 0 would wait for ever; a non-positive timeout means "whatever is there now".
        block = max(1, int(timeout_s * 1000)) if timeout_s > 0 else None
        with _errors(self.url):
            reply: Any = await self._r.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block)
        out: list[Delivery] = []
        for _name, entries in reply or []:
            out.extend(_delivery(stream, entry_id, fields) for entry_id, fields in entries if fields)
        return out

    async def ack(self, stream: str, group: str, deliveries: Sequence[Delivery]) -> None:
        for i in range(0, len(deliveries), ACK_CHUNK):
            await self.settle(stream, group, [Settled(d) for d in deliveries[i : i + ACK_CHUNK]])

    async def settle(self, stream: str, group: str, settled: Sequence[Settled]) -> int:
        keys: list[str] = [stream]
        args: list[Any] = [group, self._once_ttl_ms, "", len(settled)]
        index: dict[str, int] = {}

        def key_index(name: str) -> int:  # 1-based, as Lua's KEYS
            if name not in index:
                keys.append(name)
                index[name] = len(keys)
            return index[name]

        for item in settled:
            args += [item.delivery.id, key_index(item.once) if item.once else 0, len(item.outputs)]
            for out in item.outputs:
                args += [key_index(out.stream), out.key or "", wire(out.data)]
        args[2] = " ".join(
            f"{1 if name == stream else index[name]}:{int(r.max_age_s * 1000)}:{r.max_count}:{r.max_bytes}"
            for name, r in self._retained.items()
            if name == stream or name in index
        )
        with _errors(self.url):
            _acked, duplicates = await self._settle_script(keys=keys, args=args)
        return int(duplicates)

    async def touch(self, stream: str, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        ids = sorted((d.id for d in deliveries), key=_id_key)
        with _errors(self.url):
            await self._touch_script(keys=[stream], args=[group, consumer, ids[0], ids[-1], *ids])

    async def publish_if_room(
        self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None], room: Room
    ) -> dict[str, int] | None:
        if len(keys) != len(messages):
            raise ValueError("keys and messages differ in length")
        args: list[Any] = [room.max_bytes]
        for data, key in zip(map(wire, messages), keys, strict=True):
            args += [data, key or ""]
        with _errors(self.url):
            held: Any = await self._admit_script(keys=[stream, *room.streams], args=args)
        return None if held is None else {name: int(n) for name, n in zip(room.streams, held, strict=True)}

    async def reclaim(self, stream: str, group: str, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        idle_ms = int(min_idle_s * 1000)
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor: bytes | str = "0-0"
        with _errors(self.url):
            while len(claimed) < count:
                got: Any = await self._r.xautoclaim(
                    stream, group, consumer, idle_ms, cursor, count=count - len(claimed)
                )
                cursor, entries = got[0], got[1]
                claimed.extend((eid, fields) for eid, fields in entries if fields)
                if _s(cursor) == "0-0":
                    break
            if not claimed:
                return []
            ids = sorted((_s(eid) for eid, _ in claimed), key=_id_key)
            pending: Any = await self._r.xpending_range(stream, group, ids[0], ids[-1], len(claimed) * 2, consumer)
        attempts = {_s(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return [_delivery(stream, eid, fields, attempts.get(_s(eid), 2)) for eid, fields in claimed]

    async def backlog(self, stream: str, group: str) -> Backlog:
        with _errors(self.url):
            try:
                groups = await self._r.xinfo_groups(stream)
            except rex.ResponseError as exc:
                if "no such key" in str(exc):
                    return Backlog(0, 0)
                raise
            for g in groups:
                if _s(g["name"]) != group:
                    continue
                lag = g.get("lag")
                if lag is None:  # Redis cannot say after some deletions: count what lies past the group's cursor
                    lag = await self._count_after(stream, _s(g["last-delivered-id"]))
                return Backlog(pending=int(g["pending"]), lag=int(lag))
            return Backlog(pending=0, lag=int(await self._r.xlen(stream)))

    async def _count_after(self, stream: str, last_id: str) -> int:
        total = await self._r.xlen(stream)
        upto: Any = await self._r.xrange(stream, "-", last_id)
        return int(total) - len(upto)

    async def length(self, stream: str) -> int:
        with _errors(self.url):
            return int(await self._r.xlen(stream))

    async def peek(self, stream: str, count: int, newest: bool = False) -> list[Delivery]:
        with _errors(self.url):
            if newest:
                entries: Any = await self._r.xrevrange(stream, "+", "-", count=count)
                entries = entries[::-1]
            else:
                entries = await self._r.xrange(stream, "-", "+", count=count)
        return [_delivery(stream, eid, fields) for eid, fields in entries if fields]

    async def remove(self, stream: str, ids: Sequence[str]) -> bool:
        if ids:
            with _errors(self.url):
                await self._r.xdel(stream, *ids)
        return True

    async def trim_older(self, stream: str, age_s: float) -> None:
        # Entry ids start with their XADD time in ms. Exact, not "~": an approximate trim only drops whole radix
        # nodes (~100 entries), so a quiet feed would keep its old entries past the promised age.
        cutoff_ms = max(0, int((time.time() - age_s) * 1000))
        with _errors(self.url):
            await self._r.xtrim(stream, minid=f"{cutoff_ms}-0", approximate=False)

    async def ping(self) -> bool:
        try:
            with _errors(self.url):
                return bool(await self._r.ping())
        except (BrokerError, BrokerAuthError):
            return False

    async def delete(self, stream: str) -> None:
        with _errors(self.url):
            await self._r.delete(stream)

    async def close(self) -> None:
        await self._r.aclose()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
