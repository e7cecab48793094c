"""The loop every stage shares: consume, hand each batch on, settle — at least once, never silently.

A :class:`~visionpipe.services.runtime.stage.Stage` only turns input envelopes
into output envelopes. The :class:`Worker` around it consumes and owns the
delivery contract; what happens to one batch is :class:`~visionpipe.services.runtime.handle.Handler`'s
(admit, work, settle as items finish), how outcomes are published and acked is
:class:`~visionpipe.services.runtime.settle.Settler`'s, and what happens to one
message — duplicates, the bound on attempts, deadlines, dead letters, metrics —
the middleware's (``middleware/``). The worker itself:

* makes its streams and group, and says when it is ready — on ``/readyz`` and, with what it expects of a
  request arriving now, through the broker every heartbeat (``announce.py``), where the gateway and the
  stages before it read it (``visionpipe.stage_state``);
* consumes while what it holds in flight is under the stage's prefetch
  (``prefetch.py``, counted in requests), so device batches can fill;
* reclaims deliveries left pending by dead consumers, one at a time, and works
  on a delivery seen before (``attempts > 1``) alone: if it is what killed a
  consumer, it kills only itself, and no innocent delivery is counted a failed
  attempt beside it;
* answers a broker that lost our streams or group (restarted empty) loudly,
  counts it, and makes them again; readiness drops meanwhile;
* notices when its input has lag that does not go down while it gets nothing
  (a group member stuck after its coordinator moved, ``stall.py``) and joins
  the group again as a new member;
* on ``stop()`` (SIGTERM) stops consuming and waits for in-flight batches up to
  the grace period; whatever is unfinished stays unacked for another worker;
* in ``drain`` mode exits once the input and every upstream stage have had no
  backlog for ``service.drain_idle_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence

from visionpipe import topology
from visionpipe.backoff import Backoff
from visionpipe.broker import Broker, BrokerError, BrokerStateLost, Delivery
from visionpipe.envelope import Limits
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.announce import Presence
from visionpipe.services.runtime.handle import Handler
from visionpipe.services.runtime.middleware import Chain, Middleware, StageContext, default_middleware
from visionpipe.services.runtime.prefetch import Prefetch
from visionpipe.services.runtime.stage import Stage
from visionpipe.services.runtime.stall import Stall
from visionpipe.settings import Settings

log = logging.getLogger(__name__)

# How often the backlog gauge (and the executor's arrival estimate) is refreshed.
BACKLOG_POLL_S = 1.0


class Worker:
    def __init__(
        self,
        stage: Stage,
        broker: Broker,
        settings: Settings,
        metrics: Metrics,
        per_consume: int,
        drain: bool = False,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        """``per_consume``: messages taken per consume call; ``middleware``: instead of the default policies."""
        self.stage, self.broker, self.settings, self.metrics = stage, broker, settings, metrics
        self.name = stage.name
        self.presence = Presence(stage, broker, settings, metrics, f"{settings.service.consumer}-{self.name}")
        self.ctx = StageContext.of(self.name, broker, settings, metrics, self.presence.budgets)
        self.per_consume = per_consume
        self.drain = drain
        chain = Chain(self.ctx, default_middleware(settings) if middleware is None else middleware)
        self.handler = Handler(stage, chain, Limits(max_message_bytes=settings.limits.max_message_bytes))
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._state_lost = False  # the broker forgot our streams or group; cleared once they are made again
        self.stall = Stall()  # a member the group's work passes by (its consumer stuck): noticed, and rejoined
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
        ctx = self.ctx
        await self.broker.ensure(ctx.input, ctx.group)
        await self.broker.prepare(ctx.input, ctx.group, ctx.consumer)  # Kafka's group join overlaps model load
        await self.broker.ensure(ctx.output)
        await self.broker.ensure(ctx.dead_letter)

    async def run(self) -> None:
        await self._ensure_streams()
        self.presence.start()
        poller: asyncio.Task[None] | None = None
        try:
            await self.stage.start()
            self.started = True
            self.presence.ready()
            self.metrics.ready.labels(self.name).set(1)
            log.info("stage %s consuming %s as %s/%s", self.name, self.ctx.input, self.ctx.group, self.ctx.consumer)
            poller = asyncio.create_task(self._poll_backlog())
            await self._loop()
        finally:
            if poller is not None:
                poller.cancel()
            self.metrics.ready.labels(self.name).set(0)
            await self.presence.stop()
            await self._finish_inflight()
            await self.stage.stop()

    def _prefetch_limit(self) -> int:
        """The in-flight limit in requests: the stage's own (a DNN stage: device batches' worth), else consumes'."""
        requests = self.stage.prefetch_requests
        return requests if requests is not None else self.settings.service.max_inflight_batches * self.per_consume

    async def _loop(self) -> None:
        ctx, service = self.ctx, self.settings.service
        prefetch, backoff = Prefetch(self._prefetch_limit()), Backoff()
        next_reclaim = time.monotonic() + service.reclaim_interval_s
        idle_since: float | None = None
        while not self._stopping.is_set():
            if prefetch.limit != (limit := self._prefetch_limit()):  # a DNN stage's instances changed
                prefetch.resize(limit)
            await prefetch.room()
            if self._stopping.is_set():  # stopped while the prefetch was full: take nothing more
                return
            if self.stall.due and not self._inflight:
                await self.stall.rejoin(ctx)
            try:
                deliveries: list[Delivery] = []
                if time.monotonic() >= next_reclaim:
                    # One at a time: each is a suspect (it may be what killed its consumer), worked on alone below.
                    idle = self.settings.broker.reclaim_idle_s
                    deliveries = await self.broker.reclaim(ctx.input, ctx.group, ctx.consumer, idle, 1)
                    if not deliveries:  # none left: the next look in reclaim_interval_s; else look again at once
                        next_reclaim = time.monotonic() + service.reclaim_interval_s
                if not deliveries:
                    deliveries = await self.broker.consume(
                        ctx.input, ctx.group, ctx.consumer, self.per_consume, service.consume_timeout_s
                    )
                backoff.reset()
            except BrokerError as exc:
                await self._broker_trouble(exc, backoff)
                continue
            if not deliveries:
                if self.drain:
                    idle_since = await drained_since(self.broker, self.settings, self.name, idle_since, self._inflight)
                    if idle_since is not None and time.monotonic() - idle_since >= service.drain_idle_s:
                        log.info("stage %s: drained, exiting", self.name)
                        return
                continue
            idle_since = None
            await self._dispatch(deliveries, prefetch)

    async def _dispatch(self, deliveries: list[Delivery], prefetch: Prefetch) -> None:
        """Start work on a batch; then each delivery seen before, alone, once everything else here is done."""
        self.stall.worked()
        fresh = [d for d in deliveries if d.attempts <= 1]
        if fresh:
            task = asyncio.create_task(self.handler.handle(fresh, prefetch.hold(len(fresh))))
            self._inflight.add(task)
            self.metrics.inflight.labels(self.name).set(len(self._inflight))
            task.add_done_callback(self._batch_done)
            await asyncio.sleep(0)  # let it admit and count its real weight before the next look at the room
        for suspect in (d for d in deliveries if d.attempts > 1):
            if self._inflight:
                await asyncio.wait(set(self._inflight))
            try:
                await self.handler.handle([suspect], prefetch.hold(1))
            except Exception:
                log.exception("stage %s: redelivered %s failed", self.name, suspect.id)

    async def _broker_trouble(self, exc: BrokerError, backoff: Backoff) -> None:
        """After a failed consume: make lost state again at once, or back off."""
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
                self.ctx.input,
                self.ctx.group,
            )
            try:
                await self._ensure_streams()
            except BrokerError as again:
                log.warning("stage %s: could not make the streams yet (%s)", self.name, again)
            else:
                self._state_lost = False
                self.metrics.ready.labels(self.name).set(1)
                backoff.reset()
                return
        delay = backoff.next()
        log.warning("stage %s: broker error while consuming (%s); retrying in %.1fs", self.name, exc, delay)
        await asyncio.sleep(delay)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.metrics.inflight.labels(self.name).set(len(self._inflight))
        if not task.cancelled() and task.exception() is not None:
            log.error("stage %s: batch failed", self.name, exc_info=task.exception())

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
                backlog = await self.broker.backlog(self.ctx.input, self.ctx.group)
                self.metrics.backlog.labels(self.name).set(backlog.total)
                self.stage.observe_backlog(backlog.total)
                self.presence.announcer.backlog = backlog.total
                self.stall.observe(backlog.lag, idle=not self._inflight and not backlog.pending)
            await asyncio.sleep(BACKLOG_POLL_S)


async def drained_since(
    broker: Broker, settings: Settings, stage: str, idle_since: float | None, inflight: Collection[object]
) -> float | None:
    """Start (or keep) a stage's idle clock when nothing is in flight and upstream then its own backlog are zero;
    None resets it.

    Upstream first: a stage acks its input only after publishing its output, so an empty upstream means
    everything this stage will ever get is already in its own stream.
    """
    if inflight:
        return None
    for name in (*topology.upstream(stage), stage):
        stream, group = topology.input_stream(name, settings), topology.group(name, settings)
        try:
            if (await broker.backlog(stream, group)).total:
                return None
        except BrokerError:
            return None
    return idle_since if idle_since is not None else time.monotonic()
