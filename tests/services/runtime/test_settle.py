"""Settling on its own: outcomes become verdicts, outputs and dead letters go out with the ack, a refusing broker
is retried in place until it takes the settle."""

from __future__ import annotations

from collections.abc import Sequence

from tests.services.runtime.helpers import settings_for
from visionpipe.broker import BrokerError, DeadLetter, Delivery, MemoryBroker, Settled
from visionpipe.envelope import Envelope, Event
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.middleware import Chain, DeadLetters, Dedupe, Item, StageContext, Verdict
from visionpipe.services.runtime.settle import Settler
from visionpipe.services.runtime.stage import BadInput
from visionpipe.settings import Settings
from visionpipe.topology import DECODE


class RefusesAtFirst(MemoryBroker):
    """The real in-process broker, whose first ``refusals`` settles fail as a full or restarting server's would."""

    def __init__(self, url: str, refusals: int) -> None:
        super().__init__(url)
        self.refusals = refusals

    async def settle(self, stream: str, group: str, settled: Sequence[Settled]) -> int:
        if self.refusals > 0:
            self.refusals -= 1
            raise BrokerError("broker is full")
        return await super().settle(stream, group, settled)


async def _consumed(broker: MemoryBroker, settings: Settings, images: list[bytes]) -> tuple[StageContext, list[Item]]:
    ctx = StageContext.of(DECODE, broker, settings, Metrics())
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(i) for i in images])
    deliveries: list[Delivery] = await broker.consume(ctx.input, ctx.group, ctx.consumer, len(images), 0.1)
    return ctx, [Item(d, envelope=Envelope.decode(d.data)) for d in deliveries]


async def test_outputs_and_dead_letters_are_published_with_the_ack(ns: str) -> None:
    settings = settings_for(ns)
    broker = MemoryBroker(settings.broker.url)
    ctx, (good, bad, flaky) = await _consumed(broker, settings, [b"good", b"bad", b"flaky"])
    assert good.envelope is not None
    good.outcome = good.envelope.child(echo=b"good")
    bad.outcome = BadInput("not an image")
    flaky.outcome = RuntimeError("device lost")
    await Settler(Chain(ctx, [Dedupe(), DeadLetters()])).settle([good, bad, flaky])

    assert (good.verdict, bad.verdict, flaky.verdict) == (Verdict.DONE, Verdict.DEAD, Verdict.FAILED)
    (out,) = await broker.peek(ctx.output, 10)
    assert Envelope.decode(out.data).ts(DECODE, Event.PUBLISHED) is not None
    (letter,) = await broker.peek(ctx.dead_letter, 10)
    assert DeadLetter.decode(letter.data).reason == "not an image"
    backlog = await broker.backlog(ctx.input, ctx.group)
    assert backlog.pending == 1  # the transient failure stays pending, for redelivery


async def test_a_refused_settle_is_retried_in_place_until_the_broker_takes_it(ns: str) -> None:
    settings = settings_for(ns)
    broker = RefusesAtFirst(settings.broker.url, refusals=2)
    ctx, (item,) = await _consumed(broker, settings, [b"good"])
    assert item.envelope is not None
    item.outcome = item.envelope.child(echo=b"good")
    await Settler(Chain(ctx, [Dedupe()])).settle([item])
    assert broker.refusals == 0 and len(await broker.peek(ctx.output, 10)) == 1
    assert (await broker.backlog(ctx.input, ctx.group)).total == 0
    assert b'visionpipe_errors_total{kind="broker",stage="decode"} 2.0' in ctx.metrics.exposition()


class DropsAll(MemoryBroker):
    """Acks every input and publishes nothing, as Kafka does for deliveries whose partition moved to another member
    (which redoes them): the settle reports them all as duplicates."""

    async def settle(self, stream: str, group: str, settled: Sequence[Settled]) -> int:
        await self.ack(stream, group, [s.delivery for s in settled])
        return len(settled)


async def test_what_the_broker_dropped_is_not_remembered_as_done(ns: str) -> None:
    """Its redelivery must be worked on again, not acked as a duplicate with no output (that loses the request)."""
    settings = settings_for(ns)
    broker = DropsAll(settings.broker.url)
    ctx, (item,) = await _consumed(broker, settings, [b"moved"])
    assert item.envelope is not None
    item.outcome = item.envelope.child(echo=b"moved")
    dedupe = Dedupe()
    await Settler(Chain(ctx, [dedupe])).settle([item])
    again = Item(item.delivery, envelope=Envelope.decode(item.delivery.data))
    dedupe.admit(ctx, again)
    assert again.verdict is not Verdict.DUPLICATE
    assert not dedupe.done
