"""Requests taken out of the scheduler's queue the moment they can no longer make their expiry.

A request may carry an expiry: the moment past which its result is worth nothing to anyone (its share of an
end-to-end deadline). It is taken out as soon as the earliest it could be done — alone, in the next batch the
device can take, after everything already booked — is past that moment less the policy's margin: while the
device is still busy with other batches, not when they end (Triton's queue timeout fires only then). It is
never computed; ``on_expire`` tells its owner how late it would have been. A batch the policy sizes for
throughput (the keep-up batch) may finish past the expiry of its most urgent requests: those are taken out too,
answered rather than computed late.

Checking costs little when nothing can have expired: the earliest expiry queued is compared with the earliest
any request could be done, and only then is the queue swept. :class:`Expiring` is the part of
:class:`~visionpipe.executor.scheduler.Scheduler` that does this; the scheduler owns the queue, the model and
the device booking it reads.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from visionpipe.executor.latency import LatencyModel
from visionpipe.executor.policy import NS, QueueView

if TYPE_CHECKING:
    from visionpipe.executor.scheduler import Request

NEVER = math.inf


class DeadlineExceeded(Exception):
    """A request taken out of the queue, never computed: it could no longer be done before its expiry.

    ``late_s``: how late it would have been at best (one item alone in the next batch the device could take).
    """

    def __init__(self, late_s: float) -> None:
        super().__init__(f"would have been {late_s * 1e3:.0f} ms late")
        self.late_s = late_s


class Expiring:
    """Expiry for the scheduler: what it reads of the scheduler is declared here."""

    model: LatencyModel
    overlap: bool
    compute_free_ns: int
    margin_ns: int
    on_expire: Callable[[Request, int], None] | None
    _heap: list[Request]
    _first_expiry: float

    def view(self, now_ns: int) -> QueueView:
        raise NotImplementedError

    def _note_expiry(self, expire_ns: int | None) -> None:
        if expire_ns is not None:
            self._first_expiry = min(self._first_expiry, expire_ns)

    def earliest_done_ns(self, now_ns: int) -> int:
        """When one request sent alone in the next batch the device can take would be back on the host."""
        m = self.model
        if self.overlap:
            start = max(now_ns + int(m.lead(1) * NS), self.compute_free_ns)
            end = max(start + int(m.compute(1) * NS), now_ns + int(m.launched(1) * NS))
            return end + int(m.download(1) * NS)
        return max(now_ns, self.compute_free_ns) + int(m.total(1) * NS)

    def expire(self, now_ns: int) -> int:
        """Take out every queued request that can no longer be done before its expiry; returns how many.

        Cheap when nothing can have expired: the earliest expiry queued is compared with the earliest any
        request could be done, and only then is the queue swept.
        """
        if self.on_expire is None or self._first_expiry == NEVER:
            return 0
        done = self.earliest_done_ns(now_ns)
        if done <= self._first_expiry - self.margin_ns:
            return 0
        keep: list[Request] = []
        gone: list[tuple[Request, int]] = []
        first: float = NEVER
        for r in self._heap:
            if r.expire_ns is not None and done > r.expire_ns - self.margin_ns:
                gone.append((r, done - r.expire_ns))
            else:
                keep.append(r)
                if r.expire_ns is not None:
                    first = min(first, r.expire_ns)
        self._first_expiry = first
        if gone:
            self._heap = keep
            heapq.heapify(self._heap)
            for r, late in sorted(gone, key=lambda g: g[0].seq):
                self.on_expire(r, late)
        return len(gone)

    def next_expiry_ns(self, now_ns: int) -> int | None:
        """When the next queued request will have expired if nothing else happens first; None: none can."""
        if self.on_expire is None or self._first_expiry == NEVER:
            return None
        lead = self.earliest_done_ns(now_ns) - now_ns
        return max(now_ns + 1, int(self._first_expiry) - self.margin_ns - lead + 1)

    def _expire_in_batch(self, now_ns: int, n: int) -> bool:
        """Take out the requests that a batch of ``n`` sent now would finish past their expiry; True if any."""
        if self.on_expire is None or self._first_expiry == NEVER:
            return False
        done = self.view(now_ns).done_ns(min(n, len(self._heap)), now_ns)
        batch = heapq.nsmallest(n, self._heap)
        gone = [r for r in batch if r.expire_ns is not None and done > r.expire_ns - self.margin_ns]
        if not gone:
            return False
        ids = {id(r) for r in gone}
        self._heap = [r for r in self._heap if id(r) not in ids]
        heapq.heapify(self._heap)
        for r in gone:
            assert r.expire_ns is not None
            self.on_expire(r, done - r.expire_ns)
        return True
