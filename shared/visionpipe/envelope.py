"""The one message format on every stream: a msgpack map, never pickle.

An envelope carries a request through the pipeline: its id, where it came
from, wall-clock timestamps of every stage event (so a report can split
end-to-end latency into queueing, broker hops, decode and DNN time), a small
msgpack-native payload and named arrays as dtype + shape + raw bytes. A frame
of a video stream also carries a :class:`StreamRef` (stream id, frame index,
pts, capture time, what was skipped before it), which every stage's
``child()`` passes on, so the result names its frame without any stage
knowing about video.

Decoding treats the bytes as hostile: sizes are bounded before msgpack
allocates, every field is type-checked, and array shapes are checked against
their byte length before numpy sees them. Anything wrong raises
:class:`EnvelopeError`, which callers turn into a dead-letter entry.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1

# dtypes a stage may send; anything else (object, void, datetime) is refused so
# that a message can never make numpy build Python objects.
ALLOWED_DTYPES = frozenset(
    {"bool", "uint8", "int8", "uint16", "int16", "int32", "uint32", "int64", "float16", "float32", "float64"}
)
MAX_ID_CHARS = 256


class Event(StrEnum):
    """Per-stage events, stamped in nanoseconds of wall-clock time.

    Wall clock (not monotonic) because the stamps are compared across
    processes and hosts; on one host the clocks agree, across hosts NTP skew
    shows up as broker-hop time and is reported as such.
    """

    ENQUEUED = "enqueued"
    DEQUEUED = "dequeued"
    BATCH_START = "batch_start"
    COMPUTE_DONE = "compute_done"
    PUBLISHED = "published"


# An ingress stamp outside Event (stages never stamp it): when a dead letter that ``visionpipe dlq replay`` sent back
# was dead-lettered. It makes the replay a new submission for the stages' once-keys, and the same one however often
# that dead letter is replayed (an interrupted replay sends it again).
REPLAYED = "replayed"


class EnvelopeError(ValueError):
    """A message that cannot be trusted: poison, never retried.

    ``request_id`` is filled when it could still be read, so the dead-letter
    entry names the request.
    """

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied before anything is allocated for a message."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_array_bytes: int = 48 * 1024 * 1024
    max_arrays: int = 16
    max_ndim: int = 6
    max_payload_items: int = 4096
    max_str_bytes: int = 1024 * 1024


DEFAULT_LIMITS = Limits()
# What an envelope weighs beyond its arrays and bytes, for a broker that counts what it holds by reference.
HEADER_BYTES = 256


class CopyCount:
    """Bytes this process copied encoding and decoding envelopes: what handing them on by reference saves."""

    def __init__(self) -> None:
        self.bytes = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n


COPIED = CopyCount()


@dataclass(frozen=True)
class StreamRef:
    """Which frame of which video stream a message is, and what the ingest skipped since the stream's last one.

    ``sampled_out + dropped + missed`` are the frames between the previous frame sent on this stream and
    this one, so ``previous_index`` chains every message of a stream: a consumer puts results back in order
    and can tell a frame still on its way from one that was never sent. ``run`` tells incarnations of a
    stream id apart (indices restart at 0 when a stream is added again).
    """

    stream_id: str
    index: int  # the frame's number in the source, as the ingest counted decoded frames
    capture_ns: int  # wall clock when the ingest decoded it
    run: str = ""
    pts: int | None = None
    time_base: tuple[int, int] | None = None  # pts * num / den = seconds
    size: tuple[int, int] | None = None  # the source frame's (width, height); results are in the sent image's pixels
    session: int = 0  # connections that delivered frames before this frame's: 0 until the first reconnect
    sampled_out: int = 0  # decoded but skipped by the stream's fps since the previous frame sent
    dropped: int = 0  # decoded but dropped by the live policy (pipeline behind) since then
    missed: int = 0  # estimated lost while the source was disconnected, just before this frame

    @property
    def previous_index(self) -> int:
        """Index of the frame sent before this one on the stream; -1 for the first."""
        return self.index - 1 - self.sampled_out - self.dropped - self.missed

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {k: getattr(self, k) for k in _REF_INTS}
        doc.update(id=self.stream_id, run=self.run, pts=self.pts)
        doc["tb"] = list(self.time_base) if self.time_base is not None else None
        doc["size"] = list(self.size) if self.size is not None else None
        return doc

    @classmethod
    def from_doc(cls, raw: Any) -> StreamRef:
        if not isinstance(raw, dict):
            raise EnvelopeError("stream reference is not a map")
        sid, run = raw.get("id"), raw.get("run", "")
        if not isinstance(sid, str) or not 0 < len(sid) <= MAX_ID_CHARS or not isinstance(run, str) or len(run) > 64:
            raise EnvelopeError("stream reference has no valid stream id")
        ints = {k: raw.get(k, 0) for k in _REF_INTS}
        if not all(_is_int(v) and v >= 0 for v in ints.values()):
            raise EnvelopeError("stream reference counters must be non-negative integers")
        pts = raw.get("pts")
        if pts is not None and not _is_int(pts):
            raise EnvelopeError("stream reference pts is not an integer")
        tb, size = _int_pair(raw.get("tb"), "time base"), _int_pair(raw.get("size"), "size")
        return cls(stream_id=sid, run=run, pts=pts, time_base=tb, size=size, **ints)


_REF_INTS = ("index", "capture_ns", "session", "sampled_out", "dropped", "missed")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_pair(raw: Any, what: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and all(_is_int(v) and v > 0 for v in raw)):
        raise EnvelopeError(f"stream reference {what} is not two positive integers")
    return raw[0], raw[1]


@dataclass
class Envelope:
    request_id: str
    source: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    timestamps: dict[str, dict[str, int]] = field(default_factory=dict)
    # Wall-clock ns after which nobody waits for the result (a client's timeout); None: no deadline.
    deadline_ns: int | None = None
    # The frame of a video stream this message is; None for a still image.
    stream: StreamRef | None = None
    version: int = SCHEMA_VERSION

    def stamp(self, stage: str, event: Event | str, ns: int | None = None) -> None:
        """Record ``event`` of ``stage`` now (or at ``ns``)."""
        self.timestamps.setdefault(stage, {})[str(event)] = time.time_ns() if ns is None else ns

    def ts(self, stage: str, event: Event | str) -> int | None:
        return self.timestamps.get(stage, {}).get(str(event))

    def child(self, **payload: Any) -> Envelope:
        """A new envelope for the next stage: same id, source, history and stream frame, new payload."""
        return Envelope(
            request_id=self.request_id,
            source=self.source,
            payload=dict(payload),
            timestamps={stage: dict(events) for stage, events in self.timestamps.items()},
            deadline_ns=self.deadline_ns,
            stream=self.stream,
        )

    def frozen(self) -> Envelope:
        """This envelope, to be handed on by reference inside one process: its arrays become read-only views.

        The producer gives it up once published; every reader gets its own :meth:`share`.
        """
        for name, arr in self.arrays.items():
            if arr.flags.writeable:
                view = arr.view()
                view.flags.writeable = False
                self.arrays[name] = view
        return self

    def share(self) -> Envelope:
        """A reader's own envelope over the same data: its own maps (stamps, payload, arrays), the same arrays.

        Payload values are shared, not copied: they are msgpack-native values a reader reads once, at its hop.
        """
        return Envelope(
            request_id=self.request_id,
            source=self.source,
            payload=dict(self.payload),
            arrays=dict(self.arrays),
            timestamps={stage: dict(events) for stage, events in self.timestamps.items()},
            deadline_ns=self.deadline_ns,
            stream=self.stream,
            version=self.version,
        )

    @property
    def nbytes(self) -> int:
        """About what the encoding would weigh: the arrays, the bytes in the payload and a header."""
        payload = sum(len(v) for v in self.payload.values() if isinstance(v, bytes))
        return sum(a.nbytes for a in self.arrays.values()) + payload + HEADER_BYTES

    def encode(self) -> bytes:
        arrays = {}
        for name, arr in self.arrays.items():
            a = np.require(arr, requirements="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d
            if a.dtype.name not in ALLOWED_DTYPES:
                raise EnvelopeError(f"array {name!r}: dtype {a.dtype.name} is not allowed", self.request_id)
            # memoryview of a C-contiguous array: msgpack copies once into its buffer, numpy not at all.
            arrays[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "data": _raw_bytes(a)}
        doc = {
            "v": self.version,
            "id": self.request_id,
            "src": self.source,
            "ts": self.timestamps,
            "p": self.payload,
            "a": arrays,
        }
        if self.deadline_ns is not None:
            doc["dl"] = self.deadline_ns
        if self.stream is not None:
            doc["sr"] = self.stream.to_doc()
        data: bytes = msgpack.packb(doc, use_bin_type=True)
        COPIED.add(len(data))
        return data

    @classmethod
    def decode(cls, data: object, limits: Limits = DEFAULT_LIMITS) -> Envelope:
        """Validate and decode; arrays are read-only views of the bins msgpack copied out of ``data``.

        An envelope handed on by reference (the in-process broker: a reader's own :meth:`share`) is returned as it is.
        """
        if isinstance(data, Envelope):
            return data
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeError(f"message is {type(data).__name__}, not bytes")
        if len(data) == 0:
            raise EnvelopeError("empty message")
        if len(data) > limits.max_message_bytes:
            raise EnvelopeError(f"message of {len(data)} bytes exceeds limit {limits.max_message_bytes}")
        try:
            doc = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                ext_hook=_refuse_ext,
                max_bin_len=limits.max_array_bytes,
                max_str_len=limits.max_str_bytes,
                max_array_len=limits.max_payload_items,
                max_map_len=limits.max_payload_items,
            )
        except EnvelopeError:
            raise
        except Exception as exc:  # msgpack raises a zoo of types for bad bytes; all mean the same here
            raise EnvelopeError(f"not a msgpack envelope: {type(exc).__name__}: {exc}") from None
        COPIED.add(len(data))  # every bin (array, image) comes out as a bytes object of its own
        if not isinstance(doc, dict):
            raise EnvelopeError(f"envelope is a {type(doc).__name__}, not a map")
        request_id = doc.get("id") if isinstance(doc.get("id"), str) else None
        try:
            return _from_doc(doc, limits)
        except EnvelopeError as exc:
            exc.request_id = exc.request_id or request_id
            raise


def _raw_bytes(a: np.ndarray) -> memoryview | bytes:
    # memoryview.cast refuses 0-d and zero-size views; those are tiny, so copying them costs nothing.
    return memoryview(a).cast("B") if a.ndim and a.size else a.tobytes()  # type: ignore[arg-type]


def _refuse_ext(code: int, data: bytes) -> Any:
    raise EnvelopeError(f"msgpack extension type {code} is not allowed")


def _from_doc(doc: dict[str, Any], limits: Limits) -> Envelope:
    version = doc.get("v")
    if version != SCHEMA_VERSION:
        raise EnvelopeError(f"unknown schema version {version!r} (this build reads {SCHEMA_VERSION})")
    request_id = doc.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_CHARS:
        raise EnvelopeError("missing or invalid request id")
    source = doc.get("src", "")
    if not isinstance(source, str) or len(source) > MAX_ID_CHARS:
        raise EnvelopeError("invalid source", request_id)
    payload = doc.get("p", {})
    if not isinstance(payload, dict):
        raise EnvelopeError("payload is not a map", request_id)
    deadline = doc.get("dl")
    if deadline is not None and (not isinstance(deadline, int) or isinstance(deadline, bool) or deadline < 0):
        raise EnvelopeError("deadline is not a non-negative integer", request_id)
    stream = StreamRef.from_doc(doc["sr"]) if doc.get("sr") is not None else None
    return Envelope(
        request_id=request_id,
        source=source,
        payload=payload,
        arrays=_arrays(doc.get("a", {}), limits),
        timestamps=_timestamps(doc.get("ts", {})),
        deadline_ns=deadline,
        stream=stream,
        version=version,
    )


def _timestamps(raw: Any) -> dict[str, dict[str, int]]:
    if not isinstance(raw, dict):
        raise EnvelopeError("timestamps are not a map")
    out: dict[str, dict[str, int]] = {}
    for stage, events in raw.items():
        if not isinstance(events, dict):
            raise EnvelopeError(f"timestamps of stage {stage!r} are not a map")
        for event, ns in events.items():
            if not isinstance(ns, int) or isinstance(ns, bool) or ns < 0:
                raise EnvelopeError(f"timestamp {stage}.{event} is not a non-negative integer")
        out[stage] = dict(events)
    return out


def _arrays(raw: Any, limits: Limits) -> dict[str, np.ndarray]:
    if not isinstance(raw, dict):
        raise EnvelopeError("arrays are not a map")
    if len(raw) > limits.max_arrays:
        raise EnvelopeError(f"{len(raw)} arrays exceed limit {limits.max_arrays}")
    return {name: _array(name, spec, limits) for name, spec in raw.items()}


def _array(name: str, spec: Any, limits: Limits) -> np.ndarray:
    if not isinstance(spec, dict):
        raise EnvelopeError(f"array {name!r} is not a map")
    dtype, shape, data = spec.get("dtype"), spec.get("shape"), spec.get("data")
    if dtype not in ALLOWED_DTYPES:
        raise EnvelopeError(f"array {name!r}: dtype {dtype!r} is not allowed")
    if not isinstance(data, bytes):
        raise EnvelopeError(f"array {name!r}: data is not bytes")
    if not isinstance(shape, list) or len(shape) > limits.max_ndim:
        raise EnvelopeError(f"array {name!r}: shape must be a list of at most {limits.max_ndim} dims")
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise EnvelopeError(f"array {name!r}: bad dimension {dim!r}")
        count *= dim
    itemsize = np.dtype(dtype).itemsize
    if count * itemsize > limits.max_array_bytes:
        raise EnvelopeError(f"array {name!r}: {count * itemsize} bytes exceed limit {limits.max_array_bytes}")
    if count * itemsize != len(data):
        raise EnvelopeError(f"array {name!r}: shape {shape} of {dtype} needs {count * itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def peek_request_id(data: object) -> str | None:
    """Best-effort request id of a message that failed to decode, for its dead-letter entry."""
    if isinstance(data, Envelope):
        return data.request_id
    if not isinstance(data, bytes | bytearray | memoryview):
        return None
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except Exception:
        return None
    rid = doc.get("id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) and rid else None
