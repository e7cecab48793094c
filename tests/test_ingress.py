"""Ingress pushes back above the high watermark instead of dropping."""

from __future__ import annotations

import asyncio
import os

import pytest

from visionpipe.broker import Backlog, MemoryBroker
from visionpipe.envelope import Envelope, Event, StreamRef
from visionpipe.ingress import BacklogWatch, Backpressure, Frame, ensure_pipeline_streams, submit_images, wait_for_room
from visionpipe.settings import load_settings
from visionpipe.topology import DECODE


async def test_backpressure_rejects_then_admits_after_drain(ns: str) -> None:
    settings = load_settings(streams={"prefix": ns}, limits={"ingress_high_watermark": 3})
    broker = MemoryBroker(f"memory://{ns}")
    await ensure_pipeline_streams(broker, settings)
    ids = await submit_images(broker, settings, [Frame(b"x", request_id=f"r{i}") for i in range(3)], wait_s=0)
    assert ids == ["r0", "r1", "r2"]
    with pytest.raises(Backpressure) as info:
        await submit_images(broker, settings, [Frame(b"y")], wait_s=0)
    assert info.value.backlog == 3
    assert await broker.length(settings.streams.name("frames")) == 3  # nothing dropped, nothing added

    # A waiting producer is admitted as soon as the decode stage catches up.
    waiter = asyncio.create_task(submit_images(broker, settings, [Frame(b"z", request_id="late")], wait_s=5))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    frames = settings.streams.name("frames")
    got = await broker.consume(frames, DECODE, "c", 10, 0.1)
    await broker.ack(frames, DECODE, got)
    assert await waiter == ["late"]
    env = Envelope.decode(got[0].data)
    assert env.payload["image"] == b"x" and env.ts("ingress", Event.ENQUEUED) is not None


async def test_a_custom_group_is_the_one_counted_and_created(ns: str) -> None:
    """``service.group`` names the group for ingress as for the workers: no orphan default group holds the backlog."""
    settings = load_settings(streams={"prefix": ns}, service={"group": "blue"}, limits={"ingress_high_watermark": 2})
    broker = MemoryBroker(f"memory://{ns}")
    await ensure_pipeline_streams(broker, settings)
    await submit_images(broker, settings, [Frame(b"x"), Frame(b"y")], wait_s=0)
    frames = settings.streams.name("frames")
    got = await broker.consume(frames, "blue", "c", 10, 0.1)  # the group a worker with this setting reads
    await broker.ack(frames, "blue", got)
    assert len(got) == 2
    assert await submit_images(broker, settings, [Frame(b"z", request_id="admitted")], wait_s=0) == ["admitted"]
    # x and y are gone from the stream: no second (default-named) group still needs them.
    assert await broker.length(frames) == 1


async def test_a_video_frame_carries_its_stream_ref_and_a_lower_watermark_applies(ns: str) -> None:
    settings = load_settings(streams={"prefix": ns}, limits={"ingress_high_watermark": 100})
    broker = MemoryBroker(f"memory://{ns}")
    await ensure_pipeline_streams(broker, settings)
    ref = StreamRef("cam", index=7, capture_ns=1, pts=7)
    await submit_images(broker, settings, [Frame(b"x", request_id="f7", stream=ref)], wait_s=0)
    with pytest.raises(Backpressure) as info:  # a live stream asks for less queued ahead of it
        await wait_for_room(broker, settings, wait_s=0, watermark=1)
    assert info.value.watermark == 1
    await wait_for_room(broker, settings, wait_s=0)  # the default watermark still has room
    (got,) = await broker.peek(settings.streams.name("frames"), 1)
    assert Envelope.decode(got.data).stream == ref


BYTE_LIMIT = 400_000
FRAME_BYTES = 20_000
BATCH = 4
PRODUCERS = 6


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_byte_bound_overshoots_by_one_batch_at_most_with_producers_racing(
    backend: str, request: pytest.FixtureRequest, ns: str
) -> None:
    """Six producers, each on its own connection, submit 4-frame batches as fast as they can: the check and the
    publish are one broker step, so together they end under the bound plus one batch (not one batch each)."""
    from visionpipe.broker import Room, connect
    from visionpipe.topology import stream_names

    url = f"memory://{ns}" if backend == "memory" else request.getfixturevalue("redis_server").url
    settings = load_settings(
        broker={"url": url},
        streams={"prefix": ns},
        limits={"ingress_max_bytes": BYTE_LIMIT, "ingress_high_watermark": 10**6},
    )
    refusals: list[str] = []

    async def produce(k: int) -> None:
        async with await connect(settings=settings) as broker:
            for i in range(1000):
                batch = [Frame(os.urandom(FRAME_BYTES), request_id=f"p{k}-{i}-{j}") for j in range(BATCH)]
                try:
                    await submit_images(broker, settings, batch, wait_s=0)
                except Backpressure as exc:
                    refusals.append(str(exc))
                    return

    await asyncio.gather(*(produce(k) for k in range(PRODUCERS)))
    async with await connect(settings=settings) as broker:
        # A bound of zero refuses anything: the reply is what each stream holds.
        held = await broker.publish_if_room("unused", [b""], [None], Room(tuple(stream_names(settings)), 0))
    assert held is not None and len(refusals) == PRODUCERS
    one_batch = BATCH * FRAME_BYTES * 1.1  # the envelope and, on Redis, the stream's own bookkeeping
    assert BYTE_LIMIT <= sum(held.values()) < BYTE_LIMIT + one_batch, held
    assert all("limits.ingress_max_bytes" in r and f"most in {ns}.frames" in r for r in refusals), refusals[0]


async def test_backlog_watch_refuses_above_the_watermark_from_its_last_read(ns: str) -> None:
    settings = load_settings(streams={"prefix": ns}, limits={"ingress_high_watermark": 2})
    broker = MemoryBroker(f"memory://{ns}")
    await ensure_pipeline_streams(broker, settings)
    watch = BacklogWatch(broker, settings, interval_s=0.02)
    assert not watch.fresh
    reading = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.05)
        assert watch.fresh and watch.backlog == 0
        watch.check()
        await submit_images(broker, settings, [Frame(b"x"), Frame(b"y")], wait_s=0)
        await asyncio.sleep(0.05)
        with pytest.raises(Backpressure):
            watch.check()
    finally:
        reading.cancel()


class BacklogFailsOnce(MemoryBroker):
    """A real in-process broker whose next backlog read raises an error the broker layer does not map."""

    failures = 1

    async def backlog(self, stream: str, group: str) -> Backlog:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("READONLY You can't write against a read only replica.")
        return await super().backlog(stream, group)


async def test_backlog_watch_outlives_an_error_it_does_not_know(ns: str) -> None:
    settings = load_settings(streams={"prefix": ns})
    broker = BacklogFailsOnce(f"memory://{ns}")
    await ensure_pipeline_streams(broker, settings)
    watch = BacklogWatch(broker, settings, interval_s=0.02)
    reading = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.2)
        assert not reading.done(), f"the watch ended: {reading.exception()!r}"
        assert watch.fresh and watch.backlog == 0
    finally:
        reading.cancel()
