"""Ingress pushes back above the high watermark instead of dropping."""

from __future__ import annotations

import asyncio

import pytest

from visionpipe.broker import MemoryBroker
from visionpipe.envelope import Envelope, Event
from visionpipe.ingress import BacklogWatch, Backpressure, Frame, ensure_pipeline_streams, submit_images
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
