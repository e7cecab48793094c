"""One stream at run time: its reader thread, its publisher on the event loop, and its end-of-stream message.

The publisher takes frames from the buffer, encodes them (in a worker thread) and sends them through the
ingress (:mod:`visionpipe.ingress`), which applies the pipeline's backpressure. A ``lossless`` stream waits
for room with frames in hand, so the reader fills its small buffer and blocks: reading pauses. A ``latest``
stream waits for room (a lower watermark, ``ingest.live_high_watermark``) *before* taking a frame, so what
it sends is the newest when room comes, and everything pushed out meanwhile is counted.

When the stream ends (a file's end, a failure, or removal) the publisher sends one end-of-stream message
straight to the results stream. Its :class:`~visionpipe.envelope.StreamRef` closes the chain of the
stream's frames: its ``previous_index`` is the last frame sent, and its counters account for every frame
decoded after that. Its payload says why the stream ended and how many frames were published, so a
consumer knows how many results (or dead letters) to wait for.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from visionpipe.backoff import Backoff
from visionpipe.broker import Broker, BrokerError
from visionpipe.envelope import Envelope, Event, StreamRef
from visionpipe.ingress import Frame, frame_envelope, submit_envelopes, wait_for_room
from visionpipe.services.ingest.buffer import FrameBuffer
from visionpipe.services.ingest.encode import FrameEncoder
from visionpipe.services.ingest.order import END_OF_STREAM
from visionpipe.services.ingest.reader import Captured, Reader, merge_dropped
from visionpipe.services.ingest.schema import State, StreamCounters, StreamInfo
from visionpipe.services.ingest.source import Source
from visionpipe.services.ingest.stats import StreamStats
from visionpipe.settings import Settings, StreamSource
from visionpipe.topology import INGRESS

log = logging.getLogger(__name__)

# The end-of-stream message is worth a few retries at shutdown, not an unbounded wait for a broker gone for good.
END_ATTEMPTS = 5
ENDINGS: dict[str, State] = {"eof": "finished", "failed": "failed", "stopped": "removed"}


class Stream:
    def __init__(self, stream_id: str, spec: StreamSource, source: Source, broker: Broker, settings: Settings) -> None:
        self.id, self.spec, self.source, self.broker, self.settings = stream_id, spec, source, broker, settings
        self.run = uuid.uuid4().hex[:8]
        ingest = settings.ingest
        self.fps = spec.fps or ingest.fps
        # A live frame is worthless this long after its capture: its deadline is capture time + this.
        self.deadline_ms = spec.deadline_ms
        self.policy = spec.policy if spec.policy != "auto" else ("latest" if source.live else "lossless")
        self.stats = StreamStats()
        latest = self.policy == "latest"
        capacity = 1 if latest else ingest.file_queue_frames
        loop = asyncio.get_running_loop()
        self.buffer: FrameBuffer[Captured] = FrameBuffer(capacity, latest, merge_dropped, loop)
        self.reader = Reader(stream_id, self.run, source, self.fps, ingest, self.buffer, self.stats)
        self.encoder = FrameEncoder(ingest.max_side or settings.decode.input_size, ingest.jpeg_quality)
        self.removing = False
        self._in_hand: list[Captured] = []
        self._sending: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.reader.start()
        self._pump = asyncio.create_task(self._publish_all(), name=f"ingest-{self.id}-publish")
        self.task = asyncio.create_task(self._lifecycle(), name=f"ingest-{self.id}")

    async def remove(self) -> None:
        """Stop reading now; frames not yet sent are counted as dropped in the end-of-stream message."""
        self.removing = True
        self.reader.stop()
        if self._pump is not None:
            self._pump.cancel()
        if self.task is not None:
            await self.task

    @property
    def state(self) -> State:
        if self.task is not None and self.task.done():
            return "removed" if self.removing else ENDINGS.get(self.reader.outcome, "failed")
        state = self.reader.state
        return "draining" if state == "ended" else state

    def info(self) -> StreamInfo:
        st = self.stats
        counters = StreamCounters(
            decoded=st.decoded,
            sampled_out=st.sampled_out,
            dropped=st.dropped,
            missed=st.missed,
            published=st.published,
            reconnects=st.reconnects,
            errors=st.errors,
            corrupt_packets=st.corrupt_packets,
        )
        return StreamInfo(
            id=self.id,
            run=self.run,
            url=self.source.shown,
            kind=self.source.kind,
            live=self.source.live,
            policy=self.policy,
            fps=self.fps,
            state=self.state,
            counters=counters,
            last_error=st.last_error,
            last_index=st.last_index,
            session=st.session,
            decoder=st.decoder,
            width=st.width,
            height=st.height,
            source_fps=st.source_fps,
            annotate=self.spec.annotate,
        )

    async def _lifecycle(self) -> None:
        assert self._pump is not None
        try:
            await self._pump
        except asyncio.CancelledError:  # remove() cancelled the publisher, not this task
            pass
        except Exception as exc:  # a bug must still end the stream with its message, not leave it hanging
            log.exception("stream %s: publisher failed", self.id)
            self.stats.error(f"publisher: {type(exc).__name__}: {exc}")
        if self._sending is not None:  # a publish under way when removal came: let it land and be counted
            await asyncio.gather(self._sending, return_exceptions=True)
        self.reader.stop()
        await asyncio.to_thread(self.reader.join)  # it exits within a read timeout once stopped
        await self._end()
        log.info("stream %s %s: %s", self.id, self.state, self.stats.as_dict())

    async def _publish_all(self) -> None:
        ingest = self.settings.ingest
        latest = self.policy == "latest"
        most = 1 if latest else ingest.publish_batch
        while True:
            if latest:
                await self._wait_room(ingest.live_high_watermark)
            items = await self.buffer.take(most)
            if not items:
                return
            self._in_hand = items
            images = await asyncio.to_thread(self._encode, items)
            if not latest:
                await self._wait_room(None)
            self._sending = asyncio.ensure_future(self._send(items, images))
            await asyncio.shield(self._sending)
            self._sending = None

    def _encode(self, items: list[Captured]) -> list[bytes]:
        return [self.encoder.encode(c.frame) for c in items]

    async def _wait_room(self, watermark: int | None) -> None:
        backoff = Backoff()
        while True:
            try:
                return await wait_for_room(self.broker, self.settings, None, watermark)
            except BrokerError as exc:
                await self._broker_down(exc, backoff)

    async def _send(self, items: list[Captured], images: list[bytes]) -> None:
        # Built once: a retry after a lost reply must resend the same envelopes (the same requests), not new ones.
        envelopes = [
            frame_envelope(
                Frame(img, f"{self.id}.{self.run}.{c.ref.index}", self.source.shown[-256:], c.ref, self._deadline(c))
            )
            for c, img in zip(items, images, strict=True)
        ]
        backoff = Backoff()
        while True:
            try:  # waits on, rather than refuses, the watermark and the byte bound: a paused stream loses nothing
                await submit_envelopes(self.broker, self.settings, envelopes, wait_s=None)
                break
            except BrokerError as exc:
                await self._broker_down(exc, backoff)
        self.stats.published += len(envelopes)
        self._in_hand = []

    def _deadline(self, c: Captured) -> int | None:
        return None if self.deadline_ms is None else c.ref.capture_ns + int(self.deadline_ms * 1e6)

    async def _broker_down(self, exc: BrokerError, backoff: Backoff) -> None:
        self.stats.error(f"broker: {exc}")
        delay = backoff.next()
        log.warning("stream %s: broker unavailable (%s); retrying in %.1fs", self.id, exc, delay)
        await asyncio.sleep(delay)

    def end_ref(self) -> StreamRef:
        """The reference that closes the stream's chain: one past the last decoded frame, owning every unsent one."""
        leftovers = self._in_hand + self.buffer.drain()
        self._in_hand = []
        tail = self.reader.tail
        ref = StreamRef(
            self.id,
            self.reader.next_index,
            time.time_ns(),
            run=self.run,
            session=self.stats.session,
            sampled_out=tail.sampled_out,
            dropped=tail.dropped,
            missed=tail.missed,
        )
        for c in leftovers:
            ref = replace(
                ref,
                sampled_out=ref.sampled_out + c.ref.sampled_out,
                missed=ref.missed + c.ref.missed,
                dropped=ref.dropped + c.ref.dropped + 1,
            )
        self.stats.dropped += len(leftovers)
        return ref

    def end_payload(self) -> dict[str, Any]:
        st = self.stats
        return {
            "reason": "removed" if self.removing else (self.reader.outcome or "failed"),
            "error": st.last_error,
            **self.info().counters.model_dump(),
        }

    async def _end(self) -> None:
        ref = self.end_ref()
        env = Envelope(f"{self.id}.{self.run}.end", self.source.shown[-256:], {END_OF_STREAM: self.end_payload()})
        env.stream = ref
        env.stamp(INGRESS, Event.ENQUEUED)
        results = self.settings.streams.name("results")
        backoff = Backoff()
        for _ in range(END_ATTEMPTS):
            try:
                await self.broker.publish(results, [env.encode()], [env.request_id])
                return
            except BrokerError as exc:
                await self._broker_down(exc, backoff)
        log.error("stream %s: end-of-stream message not delivered after %d attempts", self.id, END_ATTEMPTS)
