"""The streams of one ingest service: add, list, inspect and remove them while it runs.

A plain class owned by the service, with no HTTP in it: the API router (:mod:`.api`), the service's
start-up sources and the tests all drive the same object. A finished or failed stream stays listed, with
its final counters, until it is removed, so its outcome can be read after the fact.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from visionpipe.broker import Broker
from visionpipe.services.ingest.schema import StreamExists, StreamInfo, UnknownStream
from visionpipe.services.ingest.source import Source, classify, default_id
from visionpipe.services.ingest.stream import Stream
from visionpipe.settings import Settings, StreamSource

log = logging.getLogger(__name__)


class StreamRegistry:
    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker, self.settings = broker, settings
        self.streams: dict[str, Stream] = {}

    async def add(self, spec: StreamSource) -> StreamInfo:
        """Start a stream; raises ValueError for a source that cannot work and StreamExists for a taken id."""
        source = classify(spec.url)
        if spec.live is not None:
            source = replace(source, live=spec.live)
        if spec.annotate and source.live:
            raise ValueError("an annotated video is written for a file (a stream that ends), not a live source")
        stream_id = spec.id or self._free_id(source)
        if stream_id in self.streams:
            raise StreamExists(stream_id)
        stream = Stream(stream_id, spec, source, self.broker, self.settings)
        self.streams[stream_id] = stream
        stream.start()
        log.info(
            "stream %s added: %s (%s, %s, fps %s)", stream_id, source.shown, source.kind, stream.policy, stream.fps
        )
        return stream.info()

    def list(self) -> list[StreamInfo]:
        return [s.info() for s in self.streams.values()]

    def get(self, stream_id: str) -> StreamInfo:
        return self._stream(stream_id).info()

    def stats(self) -> dict[str, StreamInfo]:
        return {sid: s.info() for sid, s in self.streams.items()}

    async def remove(self, stream_id: str) -> StreamInfo:
        """Stop the stream (its end-of-stream message says "removed" unless it had ended) and forget it."""
        stream = self._stream(stream_id)
        if stream.task is not None and not stream.task.done():
            await stream.remove()
        self.streams.pop(stream_id, None)
        log.info("stream %s removed", stream_id)
        return stream.info()

    async def wait_ended(self) -> None:
        """Until every stream registered now has ended (files finished, failures, removals)."""
        await asyncio.gather(*(s.task for s in list(self.streams.values()) if s.task is not None))

    async def close(self) -> None:
        """Stop every stream, each sending its end-of-stream message."""
        await asyncio.gather(*(s.remove() for s in self.streams.values() if s.task is not None and not s.task.done()))

    def _stream(self, stream_id: str) -> Stream:
        try:
            return self.streams[stream_id]
        except KeyError:
            raise UnknownStream(stream_id) from None

    def _free_id(self, source: Source) -> str:
        base = default_id(source)
        candidate, n = base, 1
        while candidate in self.streams:
            n += 1
            candidate = f"{base}-{n}"
        return candidate
