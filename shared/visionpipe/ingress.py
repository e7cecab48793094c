"""The pipeline's front door: admit images, or push back when the pipeline is behind.

Everything that feeds the pipeline (``visionpipe run``, the load generator,
a user's client) goes through :func:`submit_images` — or, for the HTTP
gateway, which answers thousands of requests a second, through a
:class:`BacklogWatch` and :func:`publish_frames` — so backpressure is
applied in one place: when the pipeline's backlog (every stage's pending plus
undelivered messages) is above the high watermark, callers wait (bounded) or get
:class:`Backpressure` — requests are never dropped silently and streams are
never trimmed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from visionpipe import topology
from visionpipe.broker import Broker, BrokerError
from visionpipe.envelope import Envelope, Event
from visionpipe.settings import Settings
from visionpipe.topology import INGRESS, STAGES

# How often a waiting producer re-reads the backlog: short against a batch's time, long against a broker call.
BACKPRESSURE_POLL_S = 0.05
# A backlog older than this many polls means the broker stopped answering: the front door is not ready then.
STALE_AFTER_POLLS = 40


class Backpressure(RuntimeError):
    """The pipeline is behind: the ingress backlog is above the high watermark."""

    def __init__(self, backlog: int, watermark: int) -> None:
        super().__init__(f"ingress backlog {backlog} is above the high watermark {watermark}; retry later")
        self.backlog = backlog
        self.watermark = watermark


@dataclass(frozen=True)
class Frame:
    image: bytes
    request_id: str = ""
    source: str = ""


def frame_envelope(frame: Frame) -> Envelope:
    """The ingress message: the encoded image as bytes in the payload, stamped on enqueue."""
    env = Envelope(frame.request_id or uuid.uuid4().hex, source=frame.source, payload={"image": frame.image})
    env.stamp(INGRESS, Event.ENQUEUED)
    return env


async def pipeline_backlog(broker: Broker, settings: Settings) -> int:
    """Messages waiting in or held by any stage: the sum of every stage group's pending plus lag.

    The whole pipeline, not only decode's input: decode on its own keeps up easily, so under overload
    the queue builds in front of the slowest stage (the detector on a CPU), and a watermark on the
    frames stream alone never engages while the tensors stream grows without bound.
    """
    total = 0
    for stage in STAGES:
        total += (await broker.backlog(topology.input_stream(stage, settings), topology.group(stage, settings))).total
    return total


async def wait_for_room(broker: Broker, settings: Settings, wait_s: float | None) -> None:
    """Return once the pipeline's backlog is under the watermark; raise Backpressure after ``wait_s``.

    ``wait_s=0`` never waits (HTTP-style: reject now), ``None`` waits as long as it takes.
    """
    watermark = settings.limits.ingress_high_watermark
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        backlog = await pipeline_backlog(broker, settings)
        if backlog < watermark:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise Backpressure(backlog, watermark)
        await asyncio.sleep(BACKPRESSURE_POLL_S)


async def submit_images(
    broker: Broker, settings: Settings, frames: Sequence[Frame], wait_s: float | None = None
) -> list[str]:
    """Publish ``frames`` to the frames stream after backpressure allows; returns their request ids."""
    await wait_for_room(broker, settings, wait_s)
    envelopes = [frame_envelope(f) for f in frames]
    await publish_frames(broker, settings, envelopes)
    return [e.request_id for e in envelopes]


async def publish_frames(broker: Broker, settings: Settings, envelopes: Sequence[Envelope]) -> None:
    """Put frame envelopes on the frames stream, keyed by request id (backpressure is the caller's to check)."""
    await broker.publish(
        settings.streams.name("frames"), [e.encode() for e in envelopes], [e.request_id for e in envelopes]
    )


class BacklogWatch:
    """The pipeline's backlog, re-read in the background every ``interval_s``.

    A front door that serves thousands of requests a second checks :meth:`check` instead of asking the
    broker for every stage's backlog on each request (three round trips). The value is at most one interval
    old, so a burst may pass the watermark by one interval's arrivals: bounded, and still never a drop.
    """

    def __init__(self, broker: Broker, settings: Settings, interval_s: float = BACKPRESSURE_POLL_S) -> None:
        self.broker, self.settings, self.interval_s = broker, settings, interval_s
        self.watermark = settings.limits.ingress_high_watermark
        self.backlog: int | None = None  # None until read, and after a failed read
        self.read_at = 0.0  # monotonic s

    @property
    def fresh(self) -> bool:
        """A value read lately: stale means the broker stopped answering, and the front door is not ready."""
        return self.backlog is not None and time.monotonic() - self.read_at < STALE_AFTER_POLLS * self.interval_s

    async def run(self) -> None:
        while True:
            try:
                self.backlog = await pipeline_backlog(self.broker, self.settings)
                self.read_at = time.monotonic()
            except BrokerError:
                self.backlog = None
            await asyncio.sleep(self.interval_s)

    def check(self) -> None:
        """Raise :class:`Backpressure` while the last backlog read is at or above the watermark."""
        if self.backlog is not None and self.backlog >= self.watermark:
            raise Backpressure(self.backlog, self.watermark)


async def ensure_pipeline_streams(broker: Broker, settings: Settings) -> None:
    """Create every stream and stage group, so backlog is counted from the first message."""
    for stage in STAGES:
        await broker.ensure(topology.input_stream(stage, settings), topology.group(stage, settings))
    await broker.ensure(settings.streams.name("results"))
    await broker.ensure(settings.streams.name("dead_letter"))
