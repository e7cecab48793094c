"""The pipeline's front door: admit images, or push back when the pipeline is behind.

Everything that feeds the pipeline (``visionpipe run``, ``visionpipe ingest``,
the load generator, a user's client) goes through :func:`submit_images` — or, for
the HTTP gateway, which answers thousands of requests a second, through a
:class:`BacklogWatch` and :func:`publish_frames` — so backpressure is
applied in one place. Callers wait (bounded) or get :class:`Backpressure`
while any of these holds — requests are never dropped silently and streams
are never trimmed:

* the pipeline's backlog (every stage's pending plus undelivered messages)
  is above ``limits.ingress_high_watermark``;
* the streams the pipeline writes, frames to dead letters, hold
  ``limits.ingress_max_bytes`` or more: checked and published in one broker
  step (a Redis script), so producers that submit at once overshoot by at
  most the one batch admitted just under the bound;
* the broker itself refuses writes (Redis at ``maxmemory``).

The results stream counts even when no consumer group reads it: Redis holds
its bytes all the same, and a pipeline whose results nobody collects should
stop with a refusal that says so, not at ``maxmemory``. Once a reader (the
HTTP gateway, ``visionpipe run``'s collector, your own group) acks results,
the ack trims them and the bound frees again. Dead letters count too, within
their own retention (``streams.dead_letter_max_bytes``, a quarter of the default
bound): they are kept for operators whoever reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from visionpipe import topology
from visionpipe.backoff import Backoff
from visionpipe.broker import Broker, BrokerFull, Room, connect
from visionpipe.envelope import Envelope, Event, StreamRef
from visionpipe.hops import EncodedImage
from visionpipe.settings import Settings
from visionpipe.topology import INGRESS, STAGES

log = logging.getLogger(__name__)

# How often a waiting producer re-reads the backlog: short against a batch's time, long against a broker call.
BACKPRESSURE_POLL_S = 0.05
# A backlog older than this many polls means the broker stopped answering: the front door is not ready then.
STALE_AFTER_POLLS = 40


class Backpressure(RuntimeError):
    """The pipeline is behind, or its broker full: retry later. The message says which bound was hit."""

    def __init__(self, message: str, backlog: int | None = None, watermark: int | None = None) -> None:
        super().__init__(message)
        self.backlog = backlog
        self.watermark = watermark


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def bytes_refusal(held: dict[str, int], limit: int) -> str:
    """Why a batch was refused for bytes, naming the stream that holds the most."""
    top = max(held, key=lambda name: held[name])
    detail = ", ".join(f"{name} {_mib(n)}" for name, n in sorted(held.items(), key=lambda kv: -kv[1]) if n)
    hint = (
        " (results that no reader has collected and acked: run a reader, e.g. the gateway, or raise the limit)"
        if top.endswith(".results") or top == "results"
        else ""
    )
    return (
        f"the pipeline's streams hold {_mib(sum(held.values()))}, at or above limits.ingress_max_bytes "
        f"{_mib(limit)}: {detail}; most in {top}{hint}; retry later"
    )


@dataclass(frozen=True)
class Frame:
    image: bytes
    request_id: str = ""
    source: str = ""
    stream: StreamRef | None = None  # set for a frame of a video stream
    deadline_ns: int | None = None  # wall clock: answer by then (a result, or deadline_exceeded); None: no deadline


def frame_envelope(frame: Frame) -> Envelope:
    """The ingress message: the encoded image as bytes in the payload, stamped on enqueue."""
    env = EncodedImage(frame.image).write(
        Envelope(
            frame.request_id or uuid.uuid4().hex,
            source=frame.source,
            stream=frame.stream,
            deadline_ns=frame.deadline_ns,
        )
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
            raise Backpressure(
                f"ingress backlog {backlog} is above the high watermark {watermark}; retry later", backlog, watermark
            )
        await asyncio.sleep(BACKPRESSURE_POLL_S)


async def _publish_if_room(broker: Broker, settings: Settings, envelopes: list[Envelope]) -> str | None:
    """Publish the frames unless the byte bound or a full broker refuses them; returns why it refused, or None."""
    room = Room(tuple(topology.stream_names(settings)), settings.limits.ingress_max_bytes)
    try:
        held = await broker.publish_if_room(
            settings.streams.name("frames"),
            [broker.payload(e) for e in envelopes],
            [e.request_id for e in envelopes],
            room,
        )
    except BrokerFull as exc:
        return f"the broker is full and refuses writes ({exc}); retry later"
    return None if held is None else bytes_refusal(held, room.max_bytes)


async def submit_images(
    broker: Broker, settings: Settings, frames: Sequence[Frame], wait_s: float | None = None
) -> list[str]:
    """Publish ``frames`` to the frames stream once backpressure allows; returns their request ids.

    A caller that retries after a :class:`BrokerError` must not call this again for the same frames: the
    publish may have landed with only its reply lost, and new envelopes are new requests (a new ingress stamp,
    so a new once-key at every stage). Build the envelopes once (:func:`frame_envelope`) and retry
    :func:`submit_envelopes` with them: a copy that did land is then settled once.
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    await wait_for_room(broker, settings, wait_s)
    envelopes = [frame_envelope(f) for f in frames]  # stamped enqueued now, after the first wait
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    return await submit_envelopes(broker, settings, envelopes, left)


async def submit_envelopes(
    broker: Broker, settings: Settings, envelopes: Sequence[Envelope], wait_s: float | None = None
) -> list[str]:
    """Publish these frame envelopes, the same bytes on every try, once backpressure allows; returns their ids."""
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        await wait_for_room(broker, settings, left)
        try:
            await publish_frames(broker, settings, envelopes)
            return [e.request_id for e in envelopes]
        except Backpressure:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        await asyncio.sleep(BACKPRESSURE_POLL_S)


async def publish_frames(broker: Broker, settings: Settings, envelopes: Sequence[Envelope]) -> None:
    """Put frame envelopes on the frames stream, keyed by request id, unless the byte bound or a full broker refuses.

    Raises :class:`Backpressure` with the refusal's reason; the backlog watermark is the caller's to check
    (:func:`wait_for_room`, or a :class:`BacklogWatch`).
    """
    refusal = await _publish_if_room(broker, settings, list(envelopes))
    if refusal is not None:
        raise Backpressure(refusal)


class BacklogWatch:
    """The pipeline's backlog, re-read in the background every ``interval_s``.

    A front door that serves thousands of requests a second checks :meth:`check` instead of asking the
    broker for every stage's backlog on each request (three round trips). The value is at most one interval
    old, so a burst may pass the watermark by one interval's arrivals: bounded, and still never a drop.

    :meth:`run` reads on the caller's event loop; :meth:`start_thread` reads on a thread of its own, with its
    own loop and broker connection, so the reading stays fresh however busy the caller's loop is: a front door's
    readiness then says whether the broker answers, not whether one request kept the loop for a while.
    """

    def __init__(self, broker: Broker | None, settings: Settings, interval_s: float = BACKPRESSURE_POLL_S) -> None:
        self.broker, self.settings, self.interval_s = broker, settings, interval_s
        self.watermark = settings.limits.ingress_high_watermark
        self.backlog: int | None = None  # None until read, and after a failed read
        self.read_at = 0.0  # monotonic s
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_task: asyncio.Task[None] | None = None

    @property
    def fresh(self) -> bool:
        """A value read lately: stale means the broker stopped answering, and the front door is not ready."""
        return self.backlog is not None and time.monotonic() - self.read_at < STALE_AFTER_POLLS * self.interval_s

    @property
    def alive(self) -> bool:
        """Reading: always, on the caller's loop; on a thread, while it runs."""
        return self._thread is None or self._thread.is_alive()

    async def run(self) -> None:
        assert self.broker is not None, "no broker: give one, or start_thread()"
        while True:
            try:
                self.backlog = await pipeline_backlog(self.broker, self.settings)
                self.read_at = time.monotonic()
            except Exception as exc:  # any error (an unmapped READONLY in a failover too): not ready, never dead
                if self.backlog is not None:
                    log.warning("reading the pipeline's backlog failed (%s: %s); retrying", type(exc).__name__, exc)
                self.backlog = None
            await asyncio.sleep(self.interval_s)

    def start_thread(self, url: str) -> None:
        """Read on a daemon thread with a broker connection of its own to ``url``, until :meth:`stop_thread`."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(url, ready), name="backlog", daemon=True)
        self._thread.start()
        ready.wait()

    def _thread_main(self, url: str, ready: threading.Event) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # how stop_thread ends it
            asyncio.run(self._own(url, ready))

    async def _own(self, url: str, ready: threading.Event) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_task = asyncio.current_task()
        ready.set()
        backoff = Backoff()
        while self.broker is None:
            try:
                self.broker = await connect(url, self.settings)
            except Exception as exc:  # the caller connected a moment ago; keep trying, not ready meanwhile
                log.warning("backlog reader cannot connect (%s); retrying", exc)
                await asyncio.sleep(backoff.next())
        try:
            await self.run()
        finally:
            await self.broker.close()

    def stop_thread(self, timeout_s: float = 5.0) -> None:
        """Stop the reading thread (blocking, up to ``timeout_s``); call it off the event loop of a front door."""
        loop, task, thread = self._thread_loop, self._thread_task, self._thread
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(task.cancel)
        if thread is not None:
            thread.join(timeout_s)

    def check(self) -> None:
        """Raise :class:`Backpressure` while the last backlog read is at or above the watermark."""
        if self.backlog is not None and self.backlog >= self.watermark:
            raise Backpressure(
                f"ingress backlog {self.backlog} is above the high watermark {self.watermark}; retry later",
                self.backlog,
                self.watermark,
            )


async def ensure_pipeline_streams(broker: Broker, settings: Settings) -> None:
    """Create every stream and stage group, so backlog is counted from the first message."""
    for stage in STAGES:
        await broker.ensure(topology.input_stream(stage, settings), topology.group(stage, settings))
    await broker.ensure(settings.streams.name("results"))
    await broker.ensure(settings.streams.name("dead_letter"))
