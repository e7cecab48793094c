"""The pipeline's front door: admit images, or push back when the pipeline is behind.

Everything that feeds the pipeline (``visionpipe run``, ``visionpipe ingest``,
the load generator, a user's client) goes through :func:`submit_images`, so backpressure is
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
from visionpipe.broker import Broker
from visionpipe.envelope import Envelope, Event, StreamRef
from visionpipe.settings import Settings
from visionpipe.topology import INGRESS, STAGES

# How often a waiting producer re-reads the backlog: short against a batch's time, long against a broker call.
BACKPRESSURE_POLL_S = 0.05


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
    stream: StreamRef | None = None  # set for a frame of a video stream


def frame_envelope(frame: Frame) -> Envelope:
    """The ingress message: the encoded image as bytes in the payload, stamped on enqueue."""
    env = Envelope(
        frame.request_id or uuid.uuid4().hex, source=frame.source, payload={"image": frame.image}, stream=frame.stream
    )
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


async def wait_for_room(broker: Broker, settings: Settings, wait_s: float | None, watermark: int | None = None) -> None:
    """Return once the pipeline's backlog is under the watermark; raise Backpressure after ``wait_s``.

    ``wait_s=0`` never waits (HTTP-style: reject now), ``None`` waits as long as it takes. ``watermark``
    overrides ``limits.ingress_high_watermark`` for producers that want less queued ahead of them (live video).
    """
    watermark = settings.limits.ingress_high_watermark if watermark is None else watermark
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
    return await publish_frames(broker, settings, frames)


async def publish_frames(broker: Broker, settings: Settings, frames: Sequence[Frame]) -> list[str]:
    """Publish ``frames`` now, for a producer that has just waited for room itself (:func:`wait_for_room`)."""
    envelopes = [frame_envelope(f) for f in frames]
    await broker.publish(
        settings.streams.name("frames"), [e.encode() for e in envelopes], [e.request_id for e in envelopes]
    )
    return [e.request_id for e in envelopes]


async def ensure_pipeline_streams(broker: Broker, settings: Settings) -> None:
    """Create every stream and stage group, so backlog is counted from the first message."""
    for stage in STAGES:
        await broker.ensure(topology.input_stream(stage, settings), topology.group(stage, settings))
    await broker.ensure(settings.streams.name("results"))
    await broker.ensure(settings.streams.name("dead_letter"))
