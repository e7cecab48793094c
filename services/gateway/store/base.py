"""The results seam: claim a request id, store its result bound to the claim, fetch with a bounded wait.

A backend keeps two things per request id, both expiring: the *claim* (the id is taken: by which submission, of
which image) and the *result* (a JSON document, bound to the submission it was computed for). A submission is the
time ingress stamped the request (its enqueue stamp), which every stage carries on to the result and to a dead
letter, so a result always says which submission it belongs to.

The rules that keep a result with its image, whatever the order of events:

* a result is stored only for the submission that holds the id's claim (a late result of an earlier submission,
  whose claim expired and was taken by another image, is dropped), and it makes the claim live as long as the
  result does, so the id cannot be taken by another image while the result is still there;
* a result is handed out only to someone asking for the submission it is bound to: a waiter for that submission,
  or a GET of the id, which asks for the submission holding the claim now.

Waiting follows one order in every backend: arm the wake-up, look, wait, look again at the deadline — so a result
stored between the look and the wait is never missed, and a lost wake-up costs at most the wait, never the result.
The stored value is the truth; wake-ups are hints.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

# The fingerprint of a claim made by a result whose own claim had expired: the image is not known.
UNKNOWN = ""


@dataclass(frozen=True)
class Claim:
    """Who holds a request id: the submission (ingress enqueue stamp, ns) and the fingerprint of its image."""

    fingerprint: str
    submission: int

    def encode(self) -> str:
        return f"{self.fingerprint} {self.submission}"

    @classmethod
    def decode(cls, raw: str) -> Claim:
        fingerprint, _, submission = raw.rpartition(" ")
        return cls(fingerprint, int(submission) if submission.isdigit() else 0)


@dataclass(frozen=True)
class Finished:
    """A result (or failure) document for one submission of a request id."""

    request_id: str
    submission: int
    document: bytes


class ResultsBackend(ABC):
    # True when every replica sees the same store (Redis): replicas may then share one consumer group.
    shared: bool = False

    def __init__(self) -> None:
        self._waiters: dict[tuple[str, int], set[asyncio.Future[bytes]]] = {}

    @abstractmethod
    async def admit(self, request_id: str, claim: Claim, ttl_s: float) -> Claim | None:
        """Claim ``request_id`` for ``claim``: None when claimed now, else the claim that holds it."""

    @abstractmethod
    async def release(self, request_id: str, claim: Claim) -> None:
        """Undo ``claim`` (still held) when its request never entered the pipeline (refused or failed to publish)."""

    @abstractmethod
    async def claimed(self, request_id: str) -> Claim | None:
        """The claim holding ``request_id`` now (a request in progress, or done and its result kept), or None."""

    @abstractmethod
    async def store(self, results: Sequence[Finished], ttl_s: float) -> None:
        """Keep each result for ``ttl_s`` where its submission holds the claim, and wake whoever waits for it."""

    @abstractmethod
    async def fetch(self, request_id: str, submission: int) -> bytes | None:
        """The stored result of this submission of ``request_id`` now, or None."""

    async def get(self, request_id: str, submission: int, timeout_s: float = 0.0) -> bytes | None:
        """The result of this submission, waiting up to ``timeout_s`` for it to be stored; None when not there."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        key = (request_id, submission)
        self._waiters.setdefault(key, set()).add(fut)
        try:
            found = await self.fetch(request_id, submission)
            if found is not None or timeout_s <= 0:
                return found
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
            except TimeoutError:
                return await self.fetch(request_id, submission)  # a wake-up lost on the way: the stored value decides
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    del self._waiters[key]

    @property
    def waiting(self) -> int:
        """Requests some caller waits on in this process."""
        return len(self._waiters)

    def _wake(self, request_id: str, submission: int, result: bytes) -> None:
        for fut in self._waiters.get((request_id, submission), ()):
            if not fut.done():
                fut.set_result(result)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
