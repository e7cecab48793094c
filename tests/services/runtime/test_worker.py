"""The delivery contract of the stage loop, on the real in-process broker with a tiny stage.

The stage is the decode stage's slot in the pipeline with a trivial body, so
these tests check the worker (ack after publish, dead letters, redelivery,
retries, duplicates, drain, stop) without paying for models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import pytest

from tests.services.runtime.helpers import EchoStage
from tests.services.runtime.helpers import settings_for as _settings
from visionpipe.broker import Broker, DeadLetter, MemoryBroker
from visionpipe.envelope import Envelope, Event
from visionpipe.ingress import Frame, ensure_pipeline_streams, frame_envelope, submit_images
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.stage import Outcome, Stage
from visionpipe.services.runtime.worker import Worker
from visionpipe.settings import Settings
from visionpipe.topology import DECODE


async def _drain(stage: Stage, settings: Settings, broker: Broker) -> Worker:
    worker = Worker(stage, broker, settings, Metrics(), per_consume=4, drain=True)
    await asyncio.wait_for(worker.run(), 20)
    return worker


async def _read(broker: Broker, stream: str) -> list[bytes]:
    await broker.ensure(stream, "reader")
    got = await broker.consume(stream, "reader", "r", 100, 0.05)
    return [d.data for d in got]


async def test_outputs_dead_letters_and_acks(ns: str) -> None:
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    ids = await submit_images(broker, settings, [Frame(b"a"), Frame(b"bad"), Frame(b"b")])
    await broker.publish(settings.streams.name("frames"), [b"not msgpack at all"])
    await _drain(EchoStage(), settings, broker)

    outputs = [Envelope.decode(m) for m in await _read(broker, settings.streams.name("tensors"))]
    assert sorted(e.payload["echo"] for e in outputs) == [b"a", b"b"]
    for env in outputs:  # every event of the stage is stamped, in order
        ts = [env.ts(DECODE, e) for e in (Event.DEQUEUED, Event.BATCH_START, Event.COMPUTE_DONE, Event.PUBLISHED)]
        assert None not in ts and ts == sorted(ts)
    dead = [DeadLetter.decode(m) for m in await _read(broker, settings.streams.name("dead_letter"))]
    reasons = {d.request_id: d.reason for d in dead}
    assert reasons[ids[1]] == "bad on purpose"
    assert any("bad envelope" in r for r in reasons.values())
    assert all(d.origin == settings.streams.name("frames") and d.stage == DECODE for d in dead)
    assert (await broker.backlog(settings.streams.name("frames"), DECODE)).total == 0  # all acked


async def test_transient_failure_is_redelivered_then_succeeds(ns: str) -> None:
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(b"flaky")])
    stage = EchoStage(flaky=1)
    await _drain(stage, settings, broker)
    outputs = await _read(broker, settings.streams.name("tensors"))
    assert [Envelope.decode(m).payload["echo"] for m in outputs] == [b"flaky"]
    assert stage.calls == 2


async def test_poison_that_always_fails_is_dead_lettered_after_max_retries(ns: str) -> None:
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    (rid,) = await submit_images(broker, settings, [Frame(b"flaky")])
    stage = EchoStage(flaky=100)
    await _drain(stage, settings, broker)
    dead = [DeadLetter.decode(m) for m in await _read(broker, settings.streams.name("dead_letter"))]
    assert [d.request_id for d in dead] == [rid]
    assert "gave up" in dead[0].reason
    assert stage.calls == settings.limits.max_retries
    assert await _read(broker, settings.streams.name("tensors")) == []


async def test_second_copy_of_one_submission_is_acked_without_a_second_output(ns: str) -> None:
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    copy = frame_envelope(Frame(b"a", request_id="same-id")).encode()  # one submission, in the stream twice
    await broker.publish(settings.streams.name("frames"), [copy, copy], ["same-id", "same-id"])
    await _drain(EchoStage(), settings, broker)
    assert len(await _read(broker, settings.streams.name("tensors"))) == 1
    assert (await broker.backlog(settings.streams.name("frames"), DECODE)).total == 0


async def test_a_later_request_reusing_an_id_is_a_new_request(ns: str) -> None:
    """Not acked as a duplicate with neither result nor dead letter: a new submission has a new ingress stamp."""
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(b"first", request_id="reused")])
    await _drain(EchoStage(), settings, broker)
    await submit_images(broker, settings, [Frame(b"second", request_id="reused")])
    await _drain(EchoStage(), settings, broker)
    outputs = [Envelope.decode(m) for m in await _read(broker, settings.streams.name("tensors"))]
    assert sorted(e.payload["echo"] for e in outputs) == [b"first", b"second"]


async def test_stop_finishes_in_flight_batch_and_acks_it(ns: str) -> None:
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(b"slow")])
    worker = Worker(EchoStage(slow_s=0.5), broker, settings, Metrics(), per_consume=4)
    task = asyncio.create_task(worker.run())
    while (await broker.backlog(settings.streams.name("frames"), DECODE)).pending == 0:
        await asyncio.sleep(0.01)
    worker.stop()  # what SIGTERM does: the slow item is in flight
    await asyncio.wait_for(task, 10)
    assert len(await _read(broker, settings.streams.name("tensors"))) == 1
    assert (await broker.backlog(settings.streams.name("frames"), DECODE)).total == 0


async def test_stop_after_grace_leaves_unfinished_unacked(ns: str) -> None:
    settings = _settings(ns).model_copy(
        update={"service": _settings(ns).service.model_copy(update={"drain_grace_s": 0.1})}
    )
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(b"slow")])
    worker = Worker(EchoStage(slow_s=5.0), broker, settings, Metrics(), per_consume=4)
    task = asyncio.create_task(worker.run())
    while (await broker.backlog(settings.streams.name("frames"), DECODE)).pending == 0:
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(task, 5)
    assert await _read(broker, settings.streams.name("tensors")) == []
    assert (await broker.backlog(settings.streams.name("frames"), DECODE)).pending == 1  # left for another worker


@pytest.mark.parametrize("upstream_busy", [True, False])
async def test_drain_waits_for_upstream(ns: str, upstream_busy: bool) -> None:
    """A detector in --drain mode keeps running while the decode stage still has frames to do."""
    from visionpipe.topology import DETECTOR

    class Idle(EchoStage):
        name = DETECTOR

    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    if upstream_busy:
        await submit_images(broker, settings, [Frame(b"x")])
    worker = Worker(Idle(), broker, settings, Metrics(), per_consume=4, drain=True)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(settings.service.drain_idle_s * 3)
    assert task.done() is not upstream_busy
    worker.stop()
    await asyncio.wait_for(task, 5)


class HoldingStage(Stage):
    """Counts requests per frame (the bytes' length) and holds every item until released: what is in flight."""

    name = DECODE

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.held = self.most = 0
        self.release = asyncio.Event()

    async def start(self) -> None:
        return None

    @property
    def prefetch_requests(self) -> int | None:
        return self.prefetch

    def requests_in(self, env: Envelope) -> int:
        return len(env.payload["image"])

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        return [self._one(env) for env in envelopes]

    async def _one(self, env: Envelope) -> Outcome:
        n = self.requests_in(env)
        self.held += n
        self.most = max(self.most, self.held)
        await self.release.wait()
        self.held -= n
        return env.child(echo=env.payload["image"])


async def test_prefetch_counts_requests_not_consumed_batches(ns: str) -> None:
    """Consuming one message at a time, a stage still holds its prefetch of requests (here 2 per message)."""
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(b"xx") for _ in range(20)])
    stage = HoldingStage(prefetch=8)
    worker = Worker(stage, broker, settings, Metrics(), per_consume=1, drain=True)
    run = asyncio.create_task(worker.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if stage.held >= 8:
            break
    await asyncio.sleep(0.1)  # room for a wrong worker to take more
    assert 8 <= stage.most <= 9  # one consume may overshoot by its own weight (provisionally 1, really 2)
    stage.release.set()
    await asyncio.wait_for(run, 20)
    assert len(await _read(broker, settings.streams.name("tensors"))) == 20


async def test_a_slow_live_consumer_keeps_its_delivery_a_second_one_takes_nothing(ns: str) -> None:
    """Without heartbeats the second worker would reclaim the slow item after 0.2 s idle, redo it and, past
    max_retries, dead-letter it while the first copy was about to publish: a result *and* a dead letter."""
    base = _settings(ns)
    settings = base.model_copy(update={"broker": base.broker.model_copy(update={"reclaim_idle_s": 0.2})})
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(b"slow", request_id="slow")])
    slow, thief = EchoStage(slow_s=1.5), EchoStage()
    settings_b = settings.model_copy(update={"service": settings.service.model_copy(update={"consumer": "b"})})
    first = Worker(slow, broker, settings, Metrics(), per_consume=4)
    run_a = asyncio.create_task(first.run())
    while slow.calls == 0:
        await asyncio.sleep(0.01)
    second = Worker(thief, broker, settings_b, Metrics(), per_consume=4)
    run_b = asyncio.create_task(second.run())
    while (await broker.backlog(settings.streams.name("frames"), DECODE)).total:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    for w in (first, second):
        w.stop()
    await asyncio.wait_for(asyncio.gather(run_a, run_b), 10)
    assert (slow.calls, thief.calls) == (1, 0)
    assert len(await _read(broker, settings.streams.name("tensors"))) == 1
    assert await _read(broker, settings.streams.name("dead_letter")) == []


async def test_a_broker_that_lost_the_group_is_answered_by_making_it_again(ns: str) -> None:
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    metrics = Metrics()
    worker = Worker(EchoStage(), broker, settings, metrics, per_consume=4)
    run = asyncio.create_task(worker.run())
    await submit_images(broker, settings, [Frame(b"a", request_id="before")])
    tensors = settings.streams.name("tensors")
    while not await broker.length(tensors):
        await asyncio.sleep(0.01)
    await broker.delete(settings.streams.name("frames"))  # as a broker restarted without its data
    await submit_images(broker, settings, [Frame(b"b", request_id="after")])
    while await broker.length(tensors) < 2:
        await asyncio.sleep(0.01)
    assert metrics.broker_resets.labels(DECODE)._value.get() == 1
    assert (await worker.ready_checks())["broker_state"] is True
    worker.stop()
    await asyncio.wait_for(run, 10)
