"""The loop every stage shares: consume, process, publish, dead-letter, ack — at least once, never silently.

A :class:`Stage` only turns input envelopes into output envelopes. The
:class:`Worker` around it owns the delivery contract:

* input is acked only after its output (or its dead-letter entry) is published;
* poison (undecodable envelope, bad image, wrong payload) is dead-lettered at
  once with its reason; a transient failure leaves the delivery pending, to
  be redelivered by ``reclaim``, and after ``limits.max_retries`` deliveries it
  is dead-lettered too, so nothing loops forever;
* deliveries left pending by dead consumers are reclaimed periodically;
* request ids already finished by this process are acked without redoing
  them (cheap idempotency against redelivery);
* ``stop()`` (SIGTERM) stops consuming and waits for in-flight batches up to
  the grace period; whatever is unfinished stays unacked for another worker;
* ``drain`` mode exits once the input and every upstream stage have had no
  backlog for ``service.drain_idle_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from visionpipe.broker import Broker, BrokerError, Delivery
from visionpipe.envelope import Envelope, EnvelopeError, Event, Limits, peek_request_id
from visionpipe.ingress import STAGE_STREAMS, STAGES
from visionpipe.metrics import Metrics
from visionpipe.settings import Settings

log = logging.getLogger(__name__)

# Request ids remembered for idempotency: a few minutes of traffic at thousands of messages per second.
DONE_MEMORY = 100_000
# Backoff after a broker error in the loop, doubled up to the cap: long enough not to spin, short to recover.
BROKER_BACKOFF_S = 0.2
BROKER_BACKOFF_MAX_S = 5.0
# How often the backlog gauge (and the executor's arrival estimate) is refreshed.
BACKLOG_POLL_S = 1.0


class BadInput(ValueError):
    """This message can never be processed: dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Outcome: TypeAlias = Envelope | BadInput | Exception  # output, poison, or a transient failure (left pending)


class Stage(ABC):
    """One pipeline step. ``process`` gets a batch of decoded, dequeued envelopes; one outcome each.

    Stages whose items finish at different times (the DNN stages, where the
    executor splits a consumed batch into device batches) override ``items``
    so that each output is published as soon as it is ready, not when the
    slowest item of its consumed batch is.
    """

    name: str

    @abstractmethod
    async def start(self) -> None:
        """Load models, start executors. Called once before the first batch."""

    @abstractmethod
    async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]: ...

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        """One awaitable per envelope; by default all resolve together when ``process`` returns."""
        batch = asyncio.ensure_future(self.process(envelopes))

        async def pick(i: int) -> Outcome:
            return (await asyncio.shield(batch))[i]

        return [pick(i) for i in range(len(envelopes))]

    async def stop(self) -> None:
        return None

    def observe_backlog(self, backlog: int) -> None:  # noqa: B027 - optional hook
        """The stage's input backlog, for the executor's arrival-rate estimate."""

    @property
    def ready(self) -> bool:
        return True

    @property
    def weights(self) -> str | None:
        """What the stage's model weights are ("random", a file, a weights name); None for stages without a model."""
        return None


@dataclass
class _Item:
    delivery: Delivery
    envelope: Envelope | None = None
    dead: str | None = None
    duplicate: bool = False  # already finished here: ack the redelivered copy
    in_progress: bool = False  # being worked on here now: leave it alone (see _admit)


class Worker:
    def __init__(
        self, stage: Stage, broker: Broker, settings: Settings, metrics: Metrics, batch: int, drain: bool = False
    ) -> None:
        self.stage, self.broker, self.settings, self.metrics = stage, broker, settings, metrics
        self.name = stage.name
        source, sink = STAGE_STREAMS[self.name]
        self.input, self.output = settings.streams.name(source), settings.streams.name(sink)
        self.dlq = settings.streams.name("dead_letter")
        self.group = settings.service.group or self.name
        self.consumer = f"{settings.service.consumer}-{self.name}"
        self.batch = batch
        self.drain = drain
        self.limits = Limits(max_message_bytes=settings.limits.max_message_bytes)
        self._done: OrderedDict[str, None] = OrderedDict()
        self._working: set[str] = set()
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
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
            "consuming": not self._stopping.is_set(),
        }

    async def run(self) -> None:
        await self.broker.ensure(self.input, self.group)
        await self.broker.prepare(self.input, self.group, self.consumer)  # Kafka's group join overlaps model load
        await self.broker.ensure(self.output)
        await self.broker.ensure(self.dlq)
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

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self.settings.service.max_inflight_batches)
        backoff = BROKER_BACKOFF_S
        next_reclaim = time.monotonic() + self.settings.service.reclaim_interval_s
        idle_since: float | None = None
        while not self._stopping.is_set():
            await slots.acquire()
            if self._stopping.is_set():  # stopped while every slot was busy: take nothing more
                slots.release()
                return
            try:
                deliveries = await self.broker.consume(
                    self.input, self.group, self.consumer, self.batch, self.settings.service.consume_timeout_s
                )
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.settings.service.reclaim_interval_s
                    deliveries += await self.broker.reclaim(
                        self.input, self.group, self.consumer, self.settings.broker.reclaim_idle_s, self.batch
                    )
                backoff = BROKER_BACKOFF_S
            except BrokerError as exc:
                slots.release()
                self.metrics.errors.labels(self.name, "broker").inc()
                log.warning("stage %s: broker error while consuming (%s); retrying in %.1fs", self.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BROKER_BACKOFF_MAX_S)
                continue
            if not deliveries:
                slots.release()
                if self.drain:
                    idle_since = await self._drain_check(idle_since)
                    if idle_since is not None and time.monotonic() - idle_since >= self.settings.service.drain_idle_s:
                        log.info("stage %s: drained, exiting", self.name)
                        return
                continue
            idle_since = None
            task = asyncio.create_task(self._handle(deliveries))
            self._inflight.add(task)
            self.metrics.inflight.labels(self.name).set(len(self._inflight))
            task.add_done_callback(lambda t: self._batch_done(t, slots))

    def _batch_done(self, task: asyncio.Task[None], slots: asyncio.Semaphore) -> None:
        self._inflight.discard(task)
        slots.release()
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
        own = STAGES.index(self.name)
        for stage in (*STAGES[:own], self.name):
            stream = self.settings.streams.name(STAGE_STREAMS[stage][0])
            try:
                if (await self.broker.backlog(stream, stage)).total:
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

    def _admit(self, delivery: Delivery, now_ns: int) -> _Item:
        item = _Item(delivery)
        try:
            env = Envelope.decode(delivery.data, self.limits)
        except EnvelopeError as exc:
            item.dead = f"bad envelope: {exc.reason}"
            return item
        if env.request_id in self._working:
            # Reclaimed while this process still works on it. Acking this copy would ack the same entry before
            # its output is published; if that publish then fails (broker down), the request is lost. The
            # working copy acks it; a copy that is another entry stays pending and is acked once done.
            item.in_progress = True
            return item
        if env.request_id in self._done:
            item.duplicate = True
            return item
        if delivery.attempts > self.settings.limits.max_retries:
            item.dead = f"gave up after {delivery.attempts - 1} deliveries that failed or timed out"
            return item
        self._working.add(env.request_id)
        env.stamp(self.name, Event.DEQUEUED, now_ns)
        item.envelope = env
        return item

    async def _handle(self, deliveries: list[Delivery]) -> None:
        """Admit a consumed batch, then publish and ack its items in groups as they complete."""
        items = [self._admit(d, time.time_ns()) for d in deliveries]
        self.metrics.batch_size.labels(self.name).observe(len(items))
        work = [it for it in items if it.envelope is not None]
        # Duplicates and dead letters: no work to wait for.
        ready = [it for it in items if it.envelope is None and not it.in_progress]
        if ready:
            await self._settle(ready, [])
        if not work:
            return
        pending: dict[asyncio.Future[Outcome], _Item] = {}
        for it, awaitable in zip(work, self.stage.items([it.envelope for it in work if it.envelope]), strict=True):
            pending[asyncio.ensure_future(awaitable)] = it
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                group = [(pending.pop(fut), _outcome(fut)) for fut in done]
                await self._settle([it for it, _ in group], [out for _, out in group])
        finally:
            for fut in pending:  # cancelled (SIGTERM grace over): nothing of these is acked
                fut.cancel()
            # Also reached when an earlier group's publish failed (broker down): these items stay pending and come
            # back by reclaim, so they must not look in progress then, or _admit would ack them as duplicates unworked.
            self._working.difference_update(it.envelope.request_id for it in pending.values() if it.envelope)

    async def _settle(self, items: list[_Item], outcomes: list[Outcome]) -> None:
        """Publish outputs and dead letters of ``items``, then ack them; transient failures stay pending."""
        outputs: list[Envelope] = []
        acked: list[_Item] = [it for it in items if it.duplicate]
        work = [it for it in items if it.envelope is not None]
        for it, outcome in zip(work, outcomes, strict=True):
            if isinstance(outcome, Envelope):
                outputs.append(outcome)
                acked.append(it)
            elif isinstance(outcome, BadInput):
                it.dead = outcome.reason
            else:
                self.metrics.errors.labels(self.name, type(outcome).__name__).inc()
                rid = it.envelope.request_id if it.envelope else None
                log.warning("stage %s: request %s failed, left for redelivery: %r", self.name, rid, outcome)
        dead = [it for it in items if it.dead is not None]
        try:
            await self._publish(outputs, dead)
            await self.broker.ack(self.input, self.group, [it.delivery for it in (*acked, *dead)])
            self._remember([env.request_id for env in outputs])
        finally:
            self._working.difference_update(it.envelope.request_id for it in work if it.envelope is not None)
        self._count(items, outputs, dead)

    async def _publish(self, outputs: list[Envelope], dead: list[_Item]) -> None:
        if outputs:
            now = time.time_ns()
            for env in outputs:
                env.stamp(self.name, Event.PUBLISHED, now)
            await self.broker.publish(self.output, [e.encode() for e in outputs], [e.request_id for e in outputs])
        for it in dead:
            rid = it.envelope.request_id if it.envelope is not None else peek_request_id(it.delivery.data)
            log.info("stage %s: dead-lettering %s: %s", self.name, rid, it.dead)
            await self.broker.dead_letter(
                self.dlq,
                reason=it.dead or "",
                data=it.delivery.data,
                stage=self.name,
                origin=self.input,
                request_id=rid,
            )

    def _remember(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self._done[rid] = None
        while len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)

    def _count(self, items: list[_Item], outputs: list[Envelope], dead: list[_Item]) -> None:
        m = self.metrics
        m.messages.labels(self.name, "ok").inc(len(outputs))
        m.messages.labels(self.name, "dead_letter").inc(len(dead))
        m.messages.labels(self.name, "duplicate").inc(sum(it.duplicate for it in items))
        for env in outputs:
            phases = {
                "queue": (_previous_publish(env, self.name), env.ts(self.name, Event.DEQUEUED)),
                "compute": (env.ts(self.name, Event.BATCH_START), env.ts(self.name, Event.COMPUTE_DONE)),
                "total": (env.ts(self.name, Event.DEQUEUED), env.ts(self.name, Event.PUBLISHED)),
            }
            for phase, (a, b) in phases.items():
                if a is not None and b is not None:
                    m.latency.labels(self.name, phase).observe(max(0, b - a) / 1e9)


def _outcome(fut: asyncio.Future[Outcome]) -> Outcome:
    """The item's outcome; an exception raised by the stage counts as a transient failure of that item."""
    if fut.cancelled():
        return RuntimeError("cancelled")
    exc = fut.exception()
    return exc if isinstance(exc, Exception) else fut.result()


def _previous_publish(env: Envelope, stage: str) -> int | None:
    """When the message this stage consumed was published: upstream's ``published`` or ingress ``enqueued``."""
    own = STAGES.index(stage)
    if own == 0:
        return env.ts("ingress", Event.ENQUEUED)
    return env.ts(STAGES[own - 1], Event.PUBLISHED)
