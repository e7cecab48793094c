"""The gateway's reader of the results stream: store each result for its TTL, then ack it; feed it out as JSON.

It is a :class:`~visionpipe.collector.Collector` in a group of its own, so the results stream is bounded by the
gateway's acks (the ack script trims what every group is done with), never by a length. With a shared store
(Redis) all replicas share one group: each result is read by one replica, stored where all can see it, and a
replica that dies leaves its unacked reads to be reclaimed by another. With a store of its own (memory, so with
the embedded broker or Kafka) each replica reads every result in a group named after it.

The JSON feed is the same documents on a stream of their own for readers that are not ours (redis-cli, kcat, a
service in another language); nothing of ours acks it, so it is kept for the result TTL: Kafka's topic
retention does that, on Redis the reader trims entries older than the TTL. Where replicas each read every result,
the feed is written from a second group that they share, so each result is fed once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from visionpipe.backoff import Backoff
from visionpipe.broker import Broker, DeadLetter, MemoryBroker
from visionpipe.collector import Collected, Collector
from visionpipe.envelope import Envelope, EnvelopeError, Event
from visionpipe.services.gateway.documents import expired_document, failure_document, result_document
from visionpipe.services.gateway.gateway_metrics import GatewayMetrics
from visionpipe.services.gateway.store import Finished, ResultsBackend
from visionpipe.settings import Settings
from visionpipe.topology import INGRESS

# Consume wait: short, so results and dead letters are read in turn and a stop is noticed quickly.
READ_TIMEOUT_S = 0.05
# How often the reader looks for reads a dead replica left unacked, and trims the feed by age.
RECLAIM_INTERVAL_S = 5.0
FEED_TRIM_INTERVAL_S = 10.0

log = logging.getLogger(__name__)


def reader_group(settings: Settings, results: ResultsBackend, consumer: str) -> str:
    """One group for all replicas when they share the store, else one per replica (each must see every result)."""
    group = settings.gateway.group
    return group if results.shared else f"{group}-{consumer}"


def submission(env: Envelope) -> int:
    """Which submission of its request id a message belongs to: its ingress enqueue stamp (0 when it has none)."""
    return env.ts(INGRESS, Event.ENQUEUED) or 0


def letter_submission(letter: DeadLetter) -> int:
    """The submission of a dead letter's request, from the message it holds (0 when that is no envelope)."""
    try:
        return submission(Envelope.decode(letter.data))
    except EnvelopeError:
        return 0


def documents(batch: Collected, ttl_s: float) -> list[Finished]:
    """The JSON document of every result, early answer and dead letter read, each with its submission."""
    docs = [
        Finished(env.request_id, submission(env), result_document(env, batch.wall_ns, ttl_s)) for env in batch.results
    ]
    docs += [Finished(env.request_id, submission(env), expired_document(env, e)) for env, e in batch.expired]
    return docs + [
        Finished(d.request_id, letter_submission(d), failure_document(d)) for d in batch.dead if d.request_id
    ]


class ResultsReader:
    def __init__(
        self, broker: Broker, settings: Settings, results: ResultsBackend, metrics: GatewayMetrics, consumer: str
    ) -> None:
        self.broker, self.settings, self.results, self.metrics = broker, settings, results, metrics
        self.collector = Collector(broker, settings, reader_group(settings, results, consumer), consumer)
        feed = settings.gateway.feed
        # In-process broker: nobody outside this process could read a feed.
        self.feed = f"{settings.streams.prefix}.{feed}" if feed and not isinstance(broker, MemoryBroker) else None
        self.ttl_s = settings.gateway.result_ttl_s
        # Replicas that each read every result (a store of their own) would each feed it: the feed then has a
        # reader of its own, in one group all replicas share, so each result is fed once.
        shared_feed = self.feed is not None and not results.shared
        self.feeder = Collector(broker, settings, f"{settings.gateway.group}-feed", consumer) if shared_feed else None
        self.opened = False

    async def open(self) -> None:
        await self.collector.open()
        if self.feed is not None:
            await self.broker.ensure(self.feed)
        if self.feeder is not None:
            await self.feeder.open()
        self.opened = True

    async def run(self) -> None:
        """Read until cancelled; broker errors back off and retry (the stream keeps what is unacked)."""
        backoff = Backoff()
        next_reclaim = next_trim = time.monotonic()
        while True:
            try:
                await self.collector.poll(READ_TIMEOUT_S, self._keep)
                if self.feeder is not None:
                    await self.feeder.poll(0.0, self._feed)
                now = time.monotonic()
                if self.results.shared and now >= next_reclaim:
                    next_reclaim = now + RECLAIM_INTERVAL_S
                    await self.collector.reclaim(self.settings.broker.reclaim_idle_s, self._keep)
                if self.feed is not None and now >= next_trim:
                    next_trim = now + FEED_TRIM_INTERVAL_S
                    await self.broker.trim_older(self.feed, self.ttl_s)
                backoff.reset()
            except Exception as exc:  # a loop that cannot die silently: log, back off, go on
                delay = backoff.next()
                log.warning("gateway: reading results failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _keep(self, batch: Collected) -> None:
        docs = documents(batch, self.ttl_s)
        if not docs:
            return
        await self.results.store(docs, self.ttl_s)  # before the ack: a result is never acked unstored
        if self.feed is not None and self.feeder is None:
            await self.broker.publish(self.feed, [d.document for d in docs], [d.request_id for d in docs])
        self.metrics.stored.labels("done").inc(len(batch.results))
        self.metrics.stored.labels("expired").inc(len(batch.expired))
        self.metrics.stored.labels("failed").inc(len(docs) - len(batch.results) - len(batch.expired))

    async def _feed(self, batch: Collected) -> None:
        assert self.feed is not None
        docs = documents(batch, self.ttl_s)
        if docs:
            await self.broker.publish(self.feed, [d.document for d in docs], [d.request_id for d in docs])
