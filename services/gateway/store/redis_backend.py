"""Results in Redis, shared by every gateway replica: keys with an expiry, and one pub/sub channel to wake waiters.

Keys, all under the streams prefix and all with an expiry:

* ``{prefix}:req:{id}``    the claim: ``SET NX PX`` of ``"<fingerprint> <submission>"`` for the result TTL;
* ``{prefix}:result:{id}`` ``"<submission> <document>"``, stored by ``store.lua`` only where the submission holds
  the claim, which it then keeps alive as long as the result, in the same step as the
  ``PUBLISH {prefix}:done "<id> <submission> <document>"`` that wakes waiters on every replica.

Each replica holds one subscription, whatever the number of waiting requests. A wake-up is a hint: a waiter
looks at the key before waiting and again at its deadline, so a replica that was disconnected (and missed
messages) loses nothing but time; after a reconnect every id still waited on here is looked up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.connection import ConnectionPool

from visionpipe.backoff import Backoff
from visionpipe.broker.redis_streams import pool_kwargs
from visionpipe.broker.security import redact_url
from visionpipe.services.gateway.store.base import UNKNOWN, Claim, Finished, ResultsBackend

if TYPE_CHECKING:
    from visionpipe.settings import Settings

log = logging.getLogger(__name__)

# Backoff between attempts to re-subscribe after the connection dropped, doubled up to the cap.
RESUBSCRIBE_BACKOFF_S = 0.1
RESUBSCRIBE_BACKOFF_MAX_S = 2.0
# SET NX failed but the key expired before the GET: claim again (once more is plenty; expiry is a moment).
ADMIT_ATTEMPTS = 2
# Server-side scripts; the keys and arguments of each are documented in its file's header.
STORE = (Path(__file__).parent / "store.lua").read_text()
RELEASE = (Path(__file__).parent / "release.lua").read_text()


class RedisResults(ResultsBackend):
    shared = True

    def __init__(self, url: str, client: aioredis.Redis, prefix: str) -> None:
        super().__init__()
        self.url = url
        self._r = client
        self._prefix = prefix or "vp"
        self.channel = f"{self._prefix}:done"
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._store = client.register_script(STORE)
        self._release = client.register_script(RELEASE)

    @classmethod
    async def connect(cls, url: str, settings: Settings) -> RedisResults:
        client = aioredis.Redis.from_pool(ConnectionPool(**pool_kwargs(url, settings)))
        backend = cls(url, client, settings.streams.prefix)
        backend._listener = asyncio.create_task(backend._listen(), name="results-pubsub")
        try:
            await asyncio.wait_for(backend._subscribed.wait(), settings.broker.connect_backoff_max_s * 4)
        except TimeoutError:
            await backend.close()
            raise ConnectionError(f"results store {redact_url(url)}: cannot subscribe to {backend.channel}") from None
        return backend

    def _key(self, kind: str, request_id: str) -> str:
        return f"{self._prefix}:{kind}:{request_id}"

    async def admit(self, request_id: str, claim: Claim, ttl_s: float) -> Claim | None:
        key = self._key("req", request_id)
        for _ in range(ADMIT_ATTEMPTS):
            if await self._r.set(key, claim.encode(), nx=True, px=int(ttl_s * 1000)):
                return None
            held: Any = await self._r.get(key)
            if isinstance(held, bytes):
                return Claim.decode(held.decode())
        return Claim(UNKNOWN, 0)  # taken and gone again twice in a row: an id this contended is a conflict

    async def release(self, request_id: str, claim: Claim) -> None:
        await self._release(keys=[self._key("req", request_id)], args=[claim.encode()])

    async def claimed(self, request_id: str) -> Claim | None:
        held: Any = await self._r.get(self._key("req", request_id))
        return Claim.decode(held.decode()) if isinstance(held, bytes) else None

    async def store(self, results: Sequence[Finished], ttl_s: float) -> None:
        if not results:
            return
        keys: list[str] = []
        args: list[Any] = [int(ttl_s * 1000), self.channel]
        for r in results:
            keys += [self._key("req", r.request_id), self._key("result", r.request_id)]
            args += [r.request_id, str(r.submission), r.document]
        await self._store(keys=keys, args=args)
        # Waiters here need not wait for their copy of the message; not before the write, though: a client
        # answered from a wake-up may GET the result at once, and must find it stored. A result the script
        # dropped wakes nobody: nobody waits for a submission that does not hold the claim.
        for r in results:
            self._wake(r.request_id, r.submission, r.document)

    async def fetch(self, request_id: str, submission: int) -> bytes | None:
        value: Any = await self._r.get(self._key("result", request_id))
        if not isinstance(value, bytes):
            return None
        stamp, _, doc = value.partition(b" ")
        return doc if stamp == str(submission).encode() else None

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping()) and self._subscribed.is_set()
        except (rex.RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._r.aclose()

    async def _listen(self) -> None:
        """Keep one subscription alive; after each (re)subscribe, look up every id waited on here."""
        backoff = Backoff(RESUBSCRIBE_BACKOFF_S, RESUBSCRIBE_BACKOFF_MAX_S)
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                backoff.reset()
                await self._catch_up()
                async for message in pubsub.listen():
                    self._on_message(message)
            except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
                self._subscribed.clear()
                delay = backoff.next()
                log.warning("results pub/sub lost (%s); resubscribing in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_message(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        if message.get("type") != "message" or not isinstance(data, bytes):
            return
        request_id, _, rest = data.partition(b" ")
        stamp, _, doc = rest.partition(b" ")
        if stamp.isdigit():
            self._wake(request_id.decode(errors="replace"), int(stamp), doc)

    async def _catch_up(self) -> None:
        """Wake-ups published while we were not subscribed are gone: the keys still hold the results."""
        for request_id, submission in list(self._waiters):
            found = await self.fetch(request_id, submission)
            if found is not None:
                self._wake(request_id, submission, found)
