"""Results kept in this process: for the embedded broker and Kafka, bounded by count as well as by age.

One gateway process owns this store, so only it can answer for these results; with Kafka each replica reads
every result in a consumer group of its own, so any replica can. Entries are kept in order of expiry (an entry
whose expiry moves is moved to the end, and every move is later than the entries before it), so pruning looks
only at the oldest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

from visionpipe.services.gateway.store.base import UNKNOWN, Claim, Finished, ResultsBackend

# Claims outnumber results while requests are in flight; twice the results bound leaves room for that.
ADMISSIONS_PER_RESULT = 2

T = TypeVar("T")


class MemoryResults(ResultsBackend):
    def __init__(self, max_results: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.max_results = max_results
        self.clock = clock
        self._results: OrderedDict[str, tuple[float, tuple[int, bytes]]] = OrderedDict()
        self._admissions: OrderedDict[str, tuple[float, Claim]] = OrderedDict()

    def _claim(self, request_id: str) -> Claim | None:
        held = self._admissions.get(request_id)
        return held[1] if held is not None and held[0] > self.clock() else None

    def _hold(self, request_id: str, claim: Claim, until: float) -> None:
        self._admissions.pop(request_id, None)
        self._admissions[request_id] = (until, claim)
        _prune(self._admissions, self.clock(), self.max_results * ADMISSIONS_PER_RESULT)

    async def admit(self, request_id: str, claim: Claim, ttl_s: float) -> Claim | None:
        held = self._claim(request_id)
        if held is not None:
            return held
        self._hold(request_id, claim, self.clock() + ttl_s)
        return None

    async def release(self, request_id: str, claim: Claim) -> None:
        if self._claim(request_id) == claim:
            self._admissions.pop(request_id, None)

    async def claimed(self, request_id: str) -> Claim | None:
        return self._claim(request_id)

    async def store(self, results: Sequence[Finished], ttl_s: float) -> None:
        now = self.clock()
        for r in results:
            held = self._claim(r.request_id)
            if held is not None and held.submission != r.submission:
                continue  # a late result of an earlier submission: the id is another image's now
            until = max(now + ttl_s, self._admissions[r.request_id][0] if held is not None else 0.0)
            self._hold(r.request_id, held or Claim(UNKNOWN, r.submission), until)  # the claim lives as the result
            self._results.pop(r.request_id, None)
            self._results[r.request_id] = (now + ttl_s, (r.submission, r.document))
            self._wake(r.request_id, r.submission, r.document)
        _prune(self._results, now, self.max_results)

    async def fetch(self, request_id: str, submission: int) -> bytes | None:
        held = self._results.get(request_id)
        if held is None or held[0] <= self.clock() or held[1][0] != submission:
            return None
        return held[1][1]

    def __len__(self) -> int:
        return len(self._results)


def _prune(entries: OrderedDict[str, tuple[float, T]], now: float, bound: int) -> None:
    """Drop expired entries from the front, then the oldest beyond ``bound``."""
    while entries:
        key, (expires, _) = next(iter(entries.items()))
        if expires > now and len(entries) <= bound:
            return
        del entries[key]
