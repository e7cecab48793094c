"""One thread per stream: open the source, decode, sample to the stream's fps, hand frames over; reconnect live ones.

Frame indices count decoded frames, so within a connection they are exact: every frame the ingest does
not send (sampled out, dropped while the pipeline is behind) is a gap of one that a counter accounts for,
and the frame after the gap says so in its :class:`~visionpipe.envelope.StreamRef`. Across a reconnect no
client can know how many frames it missed; the index then jumps by an estimate from the outage's wall-clock
length at the stream's frame rate, and the ``missed`` counter says exactly how far it jumped.

A file's end is the stream's end; a file that cannot be opened or decoded is a failure, never retried
(it would fail the same way). A live source's end, error or silence is a lost connection: reconnect with
capped exponential backoff and jitter, for ever, until the stream is removed.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Literal

import av
import av.logging
from av.container import InputContainer

from visionpipe.envelope import StreamRef
from visionpipe.services.ingest.buffer import FrameBuffer
from visionpipe.services.ingest.source import Source, describe_error, open_source
from visionpipe.services.ingest.stats import StreamStats
from visionpipe.settings import IngestSettings

log = logging.getLogger(__name__)

# When a stream declares no frame rate (some live TS), the reconnect-gap estimate assumes a camera's usual.
DEFAULT_FPS = 30.0
# Jitter on the backoff, so that cameras lost together (a switch reboots) do not all retry in step.
JITTER = 0.2
# Frame times within this of a sampling boundary count as on it: pts * time_base is not exact in binary.
SAMPLE_EPS = 1e-6

ReaderState = Literal["connecting", "running", "reconnecting", "ended"]


@dataclass
class Captured:
    """A decoded frame on its way to the publisher, with the reference it will travel under."""

    frame: av.VideoFrame
    ref: StreamRef


def merge_dropped(old: Captured, new: Captured) -> Captured:
    """``new`` taking over the account of ``old``, which it pushed out of a full live buffer."""
    o, n = old.ref, new.ref
    ref = replace(
        n, sampled_out=n.sampled_out + o.sampled_out, dropped=n.dropped + o.dropped + 1, missed=n.missed + o.missed
    )
    return Captured(new.frame, ref)


@dataclass
class Tail:
    """Frames not sent since the last one handed over: they belong to the next frame's (or the end's) account."""

    sampled_out: int = 0
    dropped: int = 0
    missed: int = 0


class Sampler:
    """Keeps the first frame of each 1/fps slot of stream time; a jump back in time (new pts origin) starts afresh."""

    def __init__(self, fps: float | None) -> None:
        self.fps = fps
        self._slot: int | None = None

    def reset(self) -> None:
        self._slot = None

    def keep(self, t: float | None) -> bool:
        if not self.fps or t is None:
            return True
        slot = math.floor(t * self.fps + SAMPLE_EPS)
        if slot == self._slot:
            return False
        self._slot = slot
        return True


class Reader(threading.Thread):
    def __init__(
        self,
        stream_id: str,
        run: str,
        source: Source,
        fps: float | None,
        settings: IngestSettings,
        buffer: FrameBuffer[Captured],
        stats: StreamStats,
    ) -> None:
        super().__init__(name=f"ingest-{stream_id}", daemon=True)
        self.stream_id, self.run_token, self.source, self.settings = stream_id, run, source, settings
        self.buffer, self.stats = buffer, stats
        self.sampler = Sampler(fps)
        self.stopping = threading.Event()
        self.state: ReaderState = "connecting"
        self.outcome = ""  # eof, failed or stopped, once the thread has ended
        self.next_index = 0
        self.tail = Tail()
        self._session = 0
        self._last_ns: int | None = None
        self._hwaccel = settings.hwaccel == "cuda"
        self._log: list[tuple[int, str, str]] = []

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        # FFmpeg's own errors are the only sign of some damage (a cut MPEG-TS decodes to its end without raising):
        # read them from this thread's log (local capture) and count each as the stream's error.
        av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture(local=True) as self._log:
                self.outcome = self._read()
        except Exception as exc:  # a bug here must end the stream visibly, not the thread silently
            log.exception("stream %s: reader failed", self.stream_id)
            self.stats.error(describe_error(exc))
            self.outcome = "failed"
        finally:
            self.state = "ended"
            self.buffer.close()

    def _read(self) -> str:
        attempt = 0
        while not self.stopping.is_set():
            self.state = "connecting" if self._session == 0 else "reconnecting"
            decoded_before = self.stats.decoded
            try:
                container, self._hwaccel = open_source(self.source, self.settings, self._hwaccel)
                with container:
                    ended_clean = self._connection(container)
            except (av.FFmpegError, OSError, IndexError) as exc:
                self.stats.error(describe_error(exc))
                ended_clean = False
                if not self.source.live:
                    return "failed"
            if self.stopping.is_set():
                return "stopped"
            if not self.source.live:
                return "eof" if ended_clean else "failed"
            if ended_clean:
                self.stats.error("the live source ended its stream")
            if self.stats.decoded > decoded_before:  # a connection that delivered: the next one is a new session
                self._session += 1
                attempt = 0
            else:
                attempt += 1
            self._backoff(attempt)
        return "stopped"

    def _connection(self, container: InputContainer) -> bool:
        """Decode one connection; True when it ended cleanly (or was stopped), False for a file cut short."""
        stream = container.streams.video[0]  # IndexError: no video in it
        # Decode in this thread: FFmpeg logs a decoder's errors from the thread that decodes, and only this
        # thread's log is read. Streams decode in parallel, one thread each; frame threads would also add
        # (threads - 1) frames of delay on a live source.
        stream.codec_context.thread_count = 1
        fps = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FPS
        ctx = stream.codec_context
        self.stats.decoder = ctx.name + (" (nvdec)" if self._hwaccel else "")
        self.stats.source_fps, self.stats.session = fps, self._session
        self.sampler.reset()
        decoded, first = 0, True
        for packet in container.demux(stream):
            if self.stopping.is_set():
                return True
            if packet.is_corrupt:
                self.stats.corrupt_packets += 1
                self.stats.error(f"corrupt packet at pts {packet.pts}")
            for frame in packet.decode():
                if not self._frame(frame, first, fps):
                    return True
                first = False
                decoded += 1
            if self._log:
                self._log_errors()
        declared = stream.frames
        if not self.source.live and declared and decoded < declared:
            self.stats.error(f"truncated: decoded {decoded} of the {declared} frames the container declares")
            return False
        return True

    def _log_errors(self) -> None:
        for level, name, message in self._log:
            if level <= av.logging.ERROR:
                self.stats.error(f"{name}: {message.strip()}")
        self._log.clear()  # read as it comes, so a long stream's log never piles up

    def _frame(self, frame: av.VideoFrame, first: bool, fps: float) -> bool:
        """Number, sample and hand over one frame; False when the stream is stopping."""
        now = time.time_ns()
        if first and self._session > 0 and self._last_ns is not None:
            self.stats.reconnects += 1
            # The first frame of a connection waited in FFmpeg's probe buffer for about the probe's length.
            outage_s = (now - self._last_ns) / 1e9 - (self.settings.analyze_duration_s if self.source.live else 0.0)
            gap = max(0, round(outage_s * fps) - 1)
            self.next_index += gap
            self.tail.missed += gap
            self.stats.missed += gap
        index = self.next_index
        self.next_index += 1
        self._last_ns = now
        st = self.stats
        st.decoded, st.last_index, st.last_frame_ns, st.width, st.height = (
            st.decoded + 1,
            index,
            now,
            frame.width,
            frame.height,
        )
        self.state = "running"
        tb = frame.time_base
        t = float(frame.pts * tb) if frame.pts is not None and tb else None
        if not self.sampler.keep(t):
            self.tail.sampled_out += 1
            st.sampled_out += 1
            return True
        ref = StreamRef(
            self.stream_id,
            index,
            now,
            run=self.run_token,
            pts=frame.pts,
            time_base=(tb.numerator, tb.denominator) if tb else None,
            size=(frame.width, frame.height),
            session=self._session,
            sampled_out=self.tail.sampled_out,
            dropped=self.tail.dropped,
            missed=self.tail.missed,
        )
        self.tail = Tail()
        dropped = self.buffer.put(Captured(frame, ref), self.stopping)
        if dropped < 0:  # stopped while waiting for room: this frame is the end's to account for
            self.tail = Tail(ref.sampled_out, ref.dropped + 1, ref.missed)
            st.dropped += 1
            return False
        st.dropped += dropped
        return True

    def _backoff(self, attempt: int) -> None:
        s = self.settings
        delay = min(s.reconnect_backoff_max_s, s.reconnect_backoff_s * 2**attempt)
        self.stopping.wait(delay * random.uniform(1 - JITTER, 1 + JITTER))
