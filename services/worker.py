"""The loop every stage shares: consume, process, publish, ack — at least once, never silently.

A :class:`~visionpipe.services.stage.Stage` only turns input envelopes into
output envelopes. The :class:`Worker` around it owns the delivery contract:

* input is acked only after its output (or its dead-letter entry) is published;
* outputs and dead letters are published and their inputs acked in one
  ``Broker.settle`` (one atomic step where the backend can), each input's at
  most once; a settle the broker refuses (down, full) is retried here, in place,
  rather than left to reclaim, where each try would count as a failed delivery;
* poison (undecodable envelope, bad image, wrong payload) is dead-lettered at
  once with its reason; a transient failure leaves the delivery pending, to
  be redelivered by ``reclaim``;
* deliveries left pending by dead consumers are reclaimed periodically, one at
  a time, and a delivery seen before (``attempts > 1``) is worked on alone:
  if it is what killed a consumer, it kills only itself, and no innocent
  delivery is counted a failed attempt beside it;
* it consumes while what it holds in flight is under the stage's prefetch
  (``services/prefetch.py``): consumed batches for decode, requests for the
  DNN stages, so their device batches can fill;
* a broker that lost our streams or group (restarted empty) is told loudly,
  counted, and answered by making them again; readiness drops meanwhile;
* ``stop()`` (SIGTERM) stops consuming and waits for in-flight batches up to
  the grace period; whatever is unfinished stays unacked for another worker;
* ``drain`` mode exits once the input and every upstream stage have had no
  backlog for ``service.drain_idle_s``.

What happens to one message — duplicates, the bound on attempts, deadlines,
dead letters, metrics — is decided by the middleware (``services/middleware``);
this loop only fires their hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

from visionpipe import topology
from visionpipe.broker import Broker, BrokerError, BrokerStateLost, Delivery, Output, Settled
from visionpipe.envelope import Envelope, EnvelopeError, Event, Limits
from visionpipe.metrics import Metrics
from visionpipe.services.middleware import Item, Middleware, Verdict, default_middleware
from visionpipe.services.middleware.base import ACKED
from visionpipe.services.prefetch import Prefetch
from visionpipe.services.stage import BadInput, Outcome, Stage
from visionpipe.settings import Settings

log = logging.getLogger(__name__)

# Backoff after a broker error in the loop, doubled up to the cap: long enough not to spin, short to recover.
BROKER_BACKOFF_S = 0.2
BROKER_BACKOFF_MAX_S = 5.0
# How often the backlog gauge (and the executor's arrival estimate) is refreshed.
BACKLOG_POLL_S = 1.0


class Worker:
    def __init__(
        self,
        stage: Stage,
        broker: Broker,
        settings: Settings,
        metrics: Metrics,
        batch: int,
        drain: bool = False,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.stage, self.broker, self.settings, self.metrics = stage, broker, settings, metrics
        self.name = stage.name
        self.input = topology.input_stream(self.name, settings)
        self.output = topology.output_stream(self.name, settings)
        self.dlq = settings.streams.name("dead_letter")
        self.group = topology.group(self.name, settings)
        self.consumer = f"{settings.service.consumer}-{self.name}"
        self.batch = batch
        self.drain = drain
        self.limits = Limits(max_message_bytes=settings.limits.max_message_bytes)
        self.middleware = list(default_middleware(settings) if middleware is None else middleware)
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._state_lost = False  # the broker forgot our streams or group; cleared once they are made again
        self.started = False

    def stop(self) -> None:
        """Stop taking new work (SIGTERM); ``run`` then finishes in-flight batches and returns."""
        self._stopping.set()

    async def ready_checks(self) -> dict[str, bool]:
        try:
            broker_ok = await self.broker.ping()
        except Exception:
            broker_ok = False
        return {
            "model": self.started and self.stage.ready,
            "broker": broker_ok,
            "broker_state": not self._state_lost,
            "consuming": not self._stopping.is_set(),
        }

    async def _ensure_streams(self) -> None:
        await self.broker.ensure(self.input, self.group)
        await self.broker.prepare(self.input, self.group, self.consumer)  # Kafka's group join overlaps model load
        await self.broker.ensure(self.output)
        await self.broker.ensure(self.dlq)

    async def run(self) -> None:
        await self._ensure_streams()
        await self.stage.start()
        self.started = True
        self.metrics.ready.labels(self.name).set(1)
        log.info("stage %s consuming %s as %s/%s", self.name, self.input, self.group, self.consumer)
        poller = asyncio.create_task(self._poll_backlog())
        try:
            await self._loop()
        finally:
            poller.cancel()
            self.metrics.ready.labels(self.name).set(0)
            await self._finish_inflight()
            await self.stage.stop()

    def _prefetch(self) -> tuple[Prefetch, bool]:
        """The in-flight limit, and whether it counts requests (else consumed batches)."""
        requests = self.stage.prefetch_requests
        if requests is None:
            return Prefetch(self.settings.service.max_inflight_batches), False
        return Prefetch(requests), True

    async def _loop(self) -> None:
        slots, by_request = self._prefetch()
        backoff = BROKER_BACKOFF_S
        next_reclaim = time.monotonic() + self.settings.service.reclaim_interval_s
        idle_since: float | None = None
        while not self._stopping.is_set():
            await slots.room()
            if self._stopping.is_set():  # stopped while the prefetch was full: take nothing more
                return
            try:
                deliveries: list[Delivery] = []
                if time.monotonic() >= next_reclaim:
                    # One at a time: each is a suspect (it may be what killed its consumer), worked on alone below.
                    deliveries = await self.broker.reclaim(
                        self.input, self.group, self.consumer, self.settings.broker.reclaim_idle_s, 1
                    )
                    if not deliveries:  # none left: the next look in reclaim_interval_s; else look again at once
                        next_reclaim = time.monotonic() + self.settings.service.reclaim_interval_s
                if not deliveries:
                    deliveries = await self.broker.consume(
                        self.input, self.group, self.consumer, self.batch, self.settings.service.consume_timeout_s
                    )
                backoff = BROKER_BACKOFF_S
            except BrokerError as exc:
                backoff = await self._broker_trouble(exc, backoff)
                continue
            if not deliveries:
                if self.drain:
                    idle_since = await self._drain_check(idle_since)
                    if idle_since is not None and time.monotonic() - idle_since >= self.settings.service.drain_idle_s:
                        log.info("stage %s: drained, exiting", self.name)
                        return
                continue
            idle_since = None
            await self._dispatch(deliveries, slots, by_request)

    async def _dispatch(self, deliveries: list[Delivery], slots: Prefetch, by_request: bool) -> None:
        """Start work on a batch; then each delivery seen before, alone, once everything else here is done.

        By request, a batch is held provisionally as one per delivery, corrected once admitted (``_handle``).
        """
        requests = slots if by_request else None
        fresh = [d for d in deliveries if d.attempts <= 1]
        if fresh:
            held = len(fresh) if by_request else 1
            slots.take(held)
            task = asyncio.create_task(self._handle(fresh, requests))
            self._inflight.add(task)
            self.metrics.inflight.labels(self.name).set(len(self._inflight))
            task.add_done_callback(functools.partial(self._batch_done, slots=slots, held=0 if by_request else held))
            if by_request:
                await asyncio.sleep(0)  # let it admit and count its real weight before the next look at the room
        for suspect in (d for d in deliveries if d.attempts > 1):
            if self._inflight:
                await asyncio.wait(set(self._inflight))
            if requests is not None:
                requests.take(1)
            try:
                await self._handle([suspect], requests)
            except Exception:
                log.exception("stage %s: redelivered %s failed", self.name, suspect.id)

    async def _broker_trouble(self, exc: BrokerError, backoff: float) -> float:
        """After a failed consume: make lost state again at once, or back off; returns the next backoff."""
        self.metrics.errors.labels(self.name, "broker").inc()
        if isinstance(exc, BrokerStateLost):
            self._state_lost = True
            self.metrics.ready.labels(self.name).set(0)
            self.metrics.broker_resets.labels(self.name).inc()
            log.error(
                "stage %s: THE BROKER HAS LOST ITS STATE (%s). Everything it held is gone (it restarted empty?); "
                "making %s, its group %s and our output streams again",
                self.name,
                exc,
                self.input,
                self.group,
            )
            try:
                await self._ensure_streams()
            except BrokerError as again:
                log.warning("stage %s: could not make the streams yet (%s)", self.name, again)
            else:
                self._state_lost = False
                self.metrics.ready.labels(self.name).set(1)
                return BROKER_BACKOFF_S
        log.warning("stage %s: broker error while consuming (%s); retrying in %.1fs", self.name, exc, backoff)
        await asyncio.sleep(backoff)
        return min(backoff * 2, BROKER_BACKOFF_MAX_S)

    def _batch_done(self, task: asyncio.Task[None], slots: Prefetch, held: int) -> None:
        self._inflight.discard(task)
        slots.give(held)
        self.metrics.inflight.labels(self.name).set(len(self._inflight))
        if not task.cancelled() and task.exception() is not None:
            log.error("stage %s: batch failed", self.name, exc_info=task.exception())

    async def _drain_check(self, idle_since: float | None) -> float | None:
        """Start (or keep) the idle clock when upstream then own backlog are zero; None resets it.

        Upstream first: a stage acks its input only after publishing its output,
        so an empty upstream means everything this stage will ever get is already
        in its own stream.
        """
        if self._inflight:
            return None
        for stage in (*topology.upstream(self.name), self.name):
            stream, group = topology.input_stream(stage, self.settings), topology.group(stage, self.settings)
            try:
                if (await self.broker.backlog(stream, group)).total:
                    return None
            except BrokerError:
                return None
        return idle_since if idle_since is not None else time.monotonic()

    async def _finish_inflight(self) -> None:
        if not self._inflight:
            return
        grace = self.settings.service.drain_grace_s
        log.info("stage %s: finishing %d in-flight batches (grace %.0fs)", self.name, len(self._inflight), grace)
        _, late = await asyncio.wait(set(self._inflight), timeout=grace)
        for task in late:  # unfinished: cancelled before its ack, so it is redelivered elsewhere
            task.cancel()
        if late:
            log.warning("stage %s: %d batches unfinished after the grace period, left unacked", self.name, len(late))
            await asyncio.gather(*late, return_exceptions=True)

    async def _poll_backlog(self) -> None:
        while True:
            with contextlib.suppress(BrokerError):
                backlog = (await self.broker.backlog(self.input, self.group)).total
                self.metrics.backlog.labels(self.name).set(backlog)
                self.stage.observe_backlog(backlog)
            await asyncio.sleep(BACKLOG_POLL_S)

    def _fire(self, hook: str, *args: Any) -> None:
        for m in self.middleware:
            getattr(m, hook)(self, *args)

    def _admit(self, item: Item, now_ns: int) -> None:
        """Decode, then let each middleware look; an item still ``WORK`` after all of them is processed."""
        try:
            item.envelope = Envelope.decode(item.delivery.data, self.limits)
        except EnvelopeError as exc:
            item.kill(f"bad envelope: {exc.reason}")
            return
        for m in self.middleware:
            m.admit(self, item)
            if item.verdict is not Verdict.WORK:
                return
        item.envelope.stamp(self.name, Event.DEQUEUED, now_ns)

    async def _handle(self, deliveries: list[Delivery], requests: Prefetch | None = None) -> None:
        """Admit a consumed batch, then publish and ack its items in groups as they complete.

        ``requests``: the prefetch counted in requests, held as one per delivery until admitted, then as each
        work item's requests until it settles.
        """
        items = [Item(d) for d in deliveries]
        weight: dict[int, int] = {}
        held = len(deliveries) if requests is not None else 0
        try:
            self._fire("on_consume", items)
            now = time.time_ns()
            for it in items:
                self._admit(it, now)
            work = [it for it in items if it.verdict is Verdict.WORK]
            if requests is not None:
                weight = {id(it): self.stage.requests_in(it.envelope) for it in work if it.envelope is not None}
                requests.take(sum(weight.values()) - held)
                held = 0
            await self._work(items, work, requests, weight)
        finally:
            if requests is not None:
                requests.give(held + sum(weight.values()))

    async def _work(
        self, items: list[Item], work: list[Item], requests: Prefetch | None, weight: dict[int, int]
    ) -> None:
        decided = [it for it in items if it.verdict in ACKED]  # duplicates and dead letters: no work to wait for
        if decided:
            await self._settle(decided)
        if not work:
            return
        pending: dict[asyncio.Future[Outcome], Item] = {}
        for it, awaitable in zip(work, self.stage.items([it.envelope for it in work if it.envelope]), strict=True):
            pending[asyncio.ensure_future(awaitable)] = it
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                group = []
                for fut in done:
                    it = pending.pop(fut)
                    it.outcome = _outcome(fut)
                    group.append(it)
                await self._settle(group)
                if requests is not None:
                    requests.give(sum(weight.pop(id(it), 0) for it in group))
        finally:
            for fut in pending:  # cancelled (SIGTERM grace over): nothing of these is acked
                fut.cancel()
            self._fire("on_release", list(pending.values()))

    async def _settle(self, items: list[Item]) -> None:
        """Let middleware add what to publish (dead letters), then publish and ack every settled item in one step."""
        worked = [it for it in items if it.verdict is Verdict.WORK]
        now = time.time_ns()
        try:  # an output that cannot be encoded fails the group, which is then released all the same
            for it in worked:
                if isinstance(it.outcome, Envelope):
                    it.verdict = Verdict.DONE
                    it.outcome.stamp(self.name, Event.PUBLISHED, now)
                    it.outputs.append(Output(self.output, it.outcome.encode(), it.outcome.request_id))
                elif isinstance(it.outcome, BadInput):
                    it.kill(it.outcome.reason)
                else:
                    it.verdict = Verdict.FAILED
                self._fire("on_outcome", it)
            for m in self.middleware:
                await m.before_ack(self, items)
            settled = [Settled(it.delivery, tuple(it.outputs), it.once) for it in items if it.verdict in ACKED]
            if settled:
                duplicates = await self._settle_until_done(settled)
                self.metrics.duplicates.labels(self.name).inc(duplicates)
            self._fire("after_ack", items)
        finally:
            self._fire("on_release", items)

    async def _settle_until_done(self, settled: list[Settled]) -> int:
        """``Broker.settle``, retried here on a broker error until it goes through (or shutdown cancels it).

        These items are done; only the broker stands in the way. Left to reclaim instead, every
        retry would count as a failed delivery, and a full or restarting broker would end good
        work in the dead-letter stream. The heartbeat keeps the deliveries ours meanwhile.
        """
        backoff = BROKER_BACKOFF_S
        while True:
            try:
                return await self.broker.settle(self.input, self.group, settled)
            except BrokerError as exc:
                self.metrics.errors.labels(self.name, "broker").inc()
                log.warning("stage %s: settle of %d failed (%s); retry in %.1fs", self.name, len(settled), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BROKER_BACKOFF_MAX_S)


def _outcome(fut: asyncio.Future[Outcome]) -> Outcome:
    """The item's outcome; an exception raised by the stage counts as a transient failure of that item."""
    if fut.cancelled():
        return RuntimeError("cancelled")
    exc = fut.exception()
    return exc if isinstance(exc, Exception) else fut.result()
