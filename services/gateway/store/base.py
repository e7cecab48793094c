"""The results seam: store with a TTL, fetch with a bounded wait, and claim a request id once.

A backend keeps two things per request id, both expiring after the TTL: the *admission* (the id was taken,
with a fingerprint of what was sent, so a client's retry with the same id is recognised and never enqueued
twice) and the *result* (a JSON document). Waiting follows one order in every backend: arm the wake-up, look,
wait, look again at the deadline — so a result stored between the look and the wait is never missed, and a
lost wake-up costs at most the wait, never the result. The stored value is the truth; wake-ups are hints.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence


class ResultsBackend(ABC):
    # True when every replica sees the same store (Redis): replicas may then share one consumer group.
    shared: bool = False

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[bytes]]] = {}

    @abstractmethod
    async def admit(self, request_id: str, fingerprint: str, ttl_s: float) -> str | None:
        """Claim ``request_id``: None when it is claimed now, else the fingerprint it was claimed with before."""

    @abstractmethod
    async def release(self, request_id: str) -> None:
        """Undo an admission whose request never entered the pipeline (refused or failed to publish)."""

    @abstractmethod
    async def admitted(self, request_id: str) -> bool:
        """Whether ``request_id`` was claimed within the TTL (a request in progress, or done)."""

    @abstractmethod
    async def store(self, results: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        """Keep each (request id, JSON document) for ``ttl_s`` and wake whoever waits for it, on any replica."""

    @abstractmethod
    async def fetch(self, request_id: str) -> bytes | None:
        """The stored result now, or None."""

    async def get(self, request_id: str, timeout_s: float = 0.0) -> bytes | None:
        """The result, waiting up to ``timeout_s`` for it to be stored; None when it is still not there."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, set()).add(fut)
        try:
            found = await self.fetch(request_id)
            if found is not None or timeout_s <= 0:
                return found
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
            except TimeoutError:
                return await self.fetch(request_id)  # a wake-up lost on the way: the stored value decides
        finally:
            waiting = self._waiters.get(request_id)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    del self._waiters[request_id]

    @property
    def waiting(self) -> int:
        """Requests some caller waits on in this process."""
        return len(self._waiters)

    def _wake(self, request_id: str, result: bytes) -> None:
        for fut in self._waiters.get(request_id, ()):
            if not fut.done():
                fut.set_result(result)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
