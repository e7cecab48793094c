"""Reading a stream's results back in frame order, ending at its end-of-stream message.

Results leave the pipeline in whatever order the stages finish them (replicas, Kafka partitions, batches
that complete out of turn). Every result, every dead letter of a frame and the end-of-stream message carry
a :class:`~visionpipe.envelope.StreamRef` whose ``previous_index`` names the frame sent before it, so a
consumer emits an outcome once its predecessor is out: the order is exact, a frame still on its way is
told apart from one never sent, and a stream is complete exactly when its end-of-stream message comes out
(everything before it has). Duplicates (at-least-once delivery) are dropped by index. A predecessor that
never comes (a frame lost to a stage with no replica left) would stall the chain; past ``window``
outcomes waiting, the oldest is let out and marked ``gap_before``, so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visionpipe.broker import DeadLetter
from visionpipe.envelope import Envelope, EnvelopeError, StreamRef
from visionpipe.hops import Expiry

# Outcomes held per stream waiting for a predecessor: far more than replicas x batches ever reorder.
REORDER_WINDOW = 1024
END_OF_STREAM = "end_of_stream"


@dataclass
class Outcome:
    ref: StreamRef
    record: dict[str, Any]  # one JSON line
    end: bool = False


def ref_fields(ref: StreamRef) -> dict[str, Any]:
    tb = ref.time_base
    return {
        "stream": ref.stream_id,
        "run": ref.run,
        "frame_index": ref.index,
        "previous_index": ref.previous_index,
        "pts": ref.pts,
        "time_s": None if ref.pts is None or tb is None else round(ref.pts * tb[0] / tb[1], 6),
        "capture_ns": ref.capture_ns,
        "session": ref.session,
        "sampled_out": ref.sampled_out,
        "dropped": ref.dropped,
        "missed": ref.missed,
    }


def from_result(env: Envelope) -> Outcome | None:
    """The outcome a results-stream envelope stands for; None when it is not a stream frame's."""
    if env.stream is None:
        return None
    if END_OF_STREAM in env.payload:
        return Outcome(env.stream, {**ref_fields(env.stream), END_OF_STREAM: env.payload[END_OF_STREAM]}, end=True)
    record = {**ref_fields(env.stream), "ok": True, "request_id": env.request_id, **env.payload}
    if env.stream.size is not None:
        record["source_size"] = list(env.stream.size)
    return Outcome(env.stream, record)


def from_expiry(env: Envelope, expiry: Expiry) -> Outcome | None:
    """A frame answered deadline_exceeded: it ends its place in the chain like a dead letter does."""
    if env.stream is None:
        return None
    record = {**ref_fields(env.stream), "ok": False, "request_id": env.request_id, "stage": expiry.stage}
    record.update(error=f"deadline_exceeded: {expiry.reason()}", deadline_exceeded=True, late_ms=expiry.late_ms)
    return Outcome(env.stream, record)


def from_dead_letter(dead: DeadLetter) -> Outcome | None:
    try:
        env = Envelope.decode(dead.data)
    except EnvelopeError:
        return None
    if env.stream is None:
        return None
    record = {**ref_fields(env.stream), "ok": False, "request_id": dead.request_id, "stage": dead.stage}
    record["error"] = dead.reason
    return Outcome(env.stream, record)


@dataclass
class StreamOrder:
    """One stream's outcomes, let out in frame order."""

    window: int = REORDER_WINDOW
    last: int = -1  # index of the last outcome let out
    ended: bool = False
    waiting: dict[int, Outcome] = field(default_factory=dict)  # by previous_index

    def add(self, outcome: Outcome) -> list[Outcome]:
        """``outcome`` in, every outcome now in order out (possibly none)."""
        ref = outcome.ref
        if self.ended or ref.index <= self.last or ref.previous_index in self.waiting:
            return []  # a duplicate, or news after the end
        self.waiting[ref.previous_index] = outcome
        out = self._release()
        while len(self.waiting) > self.window:
            oldest = self.waiting.pop(min(self.waiting))
            oldest.record["gap_before"] = True
            self._emit(oldest, out)
            out += self._release()
        return out

    def _release(self) -> list[Outcome]:
        out: list[Outcome] = []
        while not self.ended and self.last in self.waiting:
            self._emit(self.waiting.pop(self.last), out)
        return out

    def _emit(self, outcome: Outcome, out: list[Outcome]) -> None:
        out.append(outcome)
        self.last = outcome.ref.index
        self.ended = outcome.end
