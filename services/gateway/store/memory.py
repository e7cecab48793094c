"""Results kept in this process: for the embedded broker and Kafka, bounded by count as well as by age.

One gateway process owns this store, so only it can answer for these results; with Kafka each replica reads
every result in a consumer group of its own, so any replica can. Entries are kept in insertion order, which
with one TTL for all is also expiry order, so pruning looks only at the oldest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeVar

from visionpipe.services.gateway.store.base import ResultsBackend

# Admissions outnumber results while requests are in flight; twice the results bound leaves room for that.
ADMISSIONS_PER_RESULT = 2

T = TypeVar("T")


class MemoryResults(ResultsBackend):
    def __init__(self, max_results: int) -> None:
        super().__init__()
        self.max_results = max_results
        self._results: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._admissions: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def admit(self, request_id: str, fingerprint: str, ttl_s: float) -> str | None:
        now = time.monotonic()
        held = self._admissions.get(request_id)
        if held is not None and held[0] > now:
            return held[1]
        self._admissions.pop(request_id, None)
        self._admissions[request_id] = (now + ttl_s, fingerprint)
        _prune(self._admissions, now, self.max_results * ADMISSIONS_PER_RESULT)
        return None

    async def release(self, request_id: str) -> None:
        self._admissions.pop(request_id, None)

    async def admitted(self, request_id: str) -> bool:
        held = self._admissions.get(request_id)
        return held is not None and held[0] > time.monotonic()

    async def store(self, results: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        now = time.monotonic()
        for request_id, doc in results:
            self._results.pop(request_id, None)
            self._results[request_id] = (now + ttl_s, doc)
            self._wake(request_id, doc)
        _prune(self._results, now, self.max_results)

    async def fetch(self, request_id: str) -> bytes | None:
        held = self._results.get(request_id)
        return held[1] if held is not None and held[0] > time.monotonic() else None

    def __len__(self) -> int:
        return len(self._results)


def _prune(entries: OrderedDict[str, tuple[float, T]], now: float, bound: int) -> None:
    """Drop expired entries from the front, then the oldest beyond ``bound``."""
    while entries:
        key, (expires, _) = next(iter(entries.items()))
        if expires > now and len(entries) <= bound:
            return
        del entries[key]
