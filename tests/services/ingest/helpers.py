"""What the ingest tests share: a registry on a fresh memory broker, and reading back what it published."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import simplejpeg

from visionpipe.broker import MemoryBroker
from visionpipe.envelope import Envelope
from visionpipe.ingress import ensure_pipeline_streams
from visionpipe.services.ingest.order import END_OF_STREAM
from visionpipe.services.ingest.registry import StreamRegistry
from visionpipe.settings import Settings, load_settings

PEEK_ALL = 100_000


async def registry(ns: str, **ingest: Any) -> tuple[StreamRegistry, MemoryBroker, Settings]:
    settings = load_settings(streams={"prefix": ns}, ingest=ingest, broker={"url": f"memory://{ns}"})
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    return StreamRegistry(broker, settings), broker, settings


async def published(broker: MemoryBroker, settings: Settings, stream: str = "frames") -> list[Envelope]:
    return [Envelope.decode(d.data) for d in await broker.peek(settings.streams.name(stream), PEEK_ALL)]


async def end_of(broker: MemoryBroker, settings: Settings, stream_id: str) -> Envelope:
    ends = [e for e in await published(broker, settings, "results") if e.stream and e.stream.stream_id == stream_id]
    (end,) = [e for e in ends if END_OF_STREAM in e.payload]
    return end


def image(env: Envelope) -> Any:
    return simplejpeg.decode_jpeg(env.payload["image"])


async def wait_until(predicate: Any, timeout_s: float, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s}s")
        await asyncio.sleep(poll_s)


def assert_chain(frames: list[Envelope], end: Envelope) -> None:
    """Each message names its predecessor exactly: what a consumer relies on to reorder and to miss nothing."""
    refs = [e.stream for e in [*frames, end]]
    assert refs[0] is not None and refs[0].previous_index == -1
    for before, after in itertools.pairwise(refs):
        assert before is not None and after is not None
        assert after.previous_index == before.index, (before, after)
