"""Envelope round trips, and hostile bytes that must raise EnvelopeError (never anything else)."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionpipe.envelope import SCHEMA_VERSION, Envelope, EnvelopeError, Event, Limits, StreamRef, peek_request_id


def test_round_trip_keeps_everything() -> None:
    env = Envelope("req-1", source="cam0", payload={"w": 640, "h": 480, "tags": ["a", 1]})
    env.arrays["img"] = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    env.arrays["boxes"] = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    env.stamp("decode", Event.DEQUEUED, 123)
    out = Envelope.decode(env.encode())
    assert out.request_id == "req-1" and out.source == "cam0"
    assert out.payload == env.payload
    assert out.ts("decode", Event.DEQUEUED) == 123
    for name, arr in env.arrays.items():
        np.testing.assert_array_equal(out.arrays[name], arr)
        assert out.arrays[name].dtype == arr.dtype


def test_arrays_are_zero_copy_views() -> None:
    env = Envelope("r", arrays={"x": np.ones((64, 64), np.float32)})
    out = Envelope.decode(env.encode())
    assert not out.arrays["x"].flags.owndata
    assert not out.arrays["x"].flags.writeable


def test_non_contiguous_arrays_encode() -> None:
    a = np.arange(100, dtype=np.int32).reshape(10, 10)[:, ::2]
    out = Envelope.decode(Envelope("r", arrays={"a": a}).encode())
    np.testing.assert_array_equal(out.arrays["a"], a)


def test_child_keeps_history_not_payload() -> None:
    env = Envelope("r", source="s", payload={"x": 1})
    env.stamp("decode", Event.PUBLISHED, 5)
    kid = env.child(y=2)
    kid.stamp("detector", Event.DEQUEUED, 6)
    assert kid.payload == {"y": 2} and kid.ts("decode", Event.PUBLISHED) == 5
    assert env.ts("detector", Event.DEQUEUED) is None


def _doc(**over: object) -> bytes:
    doc: dict[str, object] = {"v": SCHEMA_VERSION, "id": "r1", "src": "", "ts": {}, "p": {}, "a": {}}
    doc.update(over)
    return msgpack.packb(doc, use_bin_type=True)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "empty"),
        (b"\xc1", "not a msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (_doc(v=99), "schema version"),
        (_doc(id=""), "request id"),
        (_doc(id=5), "request id"),
        (_doc(p=[1]), "payload"),
        (_doc(ts={"decode": {"deq": -1}}), "timestamp"),
        (_doc(a={"x": {"dtype": "object", "shape": [1], "data": b"\0" * 8}}), "dtype"),
        (_doc(a={"x": {"dtype": "uint8", "shape": [2, 2], "data": b"\0" * 3}}), "needs 4 bytes"),
        (_doc(a={"x": {"dtype": "uint8", "shape": [-1], "data": b""}}), "dimension"),
        (_doc(a={"x": {"dtype": "uint8", "shape": [1 << 40, 1 << 40], "data": b""}}), "exceed"),
        (_doc(a={"x": {"dtype": "uint8", "shape": [1] * 9, "data": b"\0"}}), "at most"),
        (msgpack.packb({"v": 1, "id": "r", "p": msgpack.ExtType(5, b"x")}), "extension"),
    ],
)
def test_bad_messages_raise_envelope_error(raw: bytes, fragment: str) -> None:
    with pytest.raises(EnvelopeError, match=fragment):
        Envelope.decode(raw)


def test_error_names_request_when_readable() -> None:
    with pytest.raises(EnvelopeError) as info:
        Envelope.decode(_doc(p=[1]))
    assert info.value.request_id == "r1"
    assert peek_request_id(_doc(v=7)) == "r1"
    assert peek_request_id(b"\x00garbage") is None


def test_limits_apply_before_allocation() -> None:
    big = Envelope("r", arrays={"x": np.zeros(1000, np.uint8)}).encode()
    with pytest.raises(EnvelopeError, match="exceeds limit"):
        Envelope.decode(big, Limits(max_message_bytes=500))
    with pytest.raises(EnvelopeError):
        Envelope.decode(big, Limits(max_array_bytes=999))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_only_raise_envelope_error(raw: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        Envelope.decode(raw)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "id", "src", "ts", "p", "a", "x"]), _msgpack_values, max_size=7))
def test_fuzz_structured_documents_only_raise_envelope_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(EnvelopeError):
        Envelope.decode(msgpack.packb(doc, use_bin_type=True))


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["uint8", "float32", "int64", "float16", "bool"]),
    st.lists(st.integers(0, 6), max_size=4),
)
def test_fuzz_round_trip(request_id: str, dtype: str, shape: list[int]) -> None:
    arr = np.zeros(shape, dtype=dtype)
    out = Envelope.decode(Envelope(request_id, arrays={"a": arr}).encode())
    assert out.request_id == request_id
    assert out.arrays["a"].shape == arr.shape and out.arrays["a"].dtype == arr.dtype


def _ref(**over: object) -> StreamRef:
    base: dict[str, object] = {"stream_id": "cam1", "index": 12, "capture_ns": 5, "run": "ab12", "pts": 6144}
    base.update(time_base=(1, 15360), size=(1920, 1080), session=1, sampled_out=2, dropped=3, missed=4)
    base.update(over)
    return StreamRef(**base)  # type: ignore[arg-type]


def test_stream_ref_round_trips_and_every_child_keeps_it() -> None:
    env = Envelope("r", payload={"image": b"x"}, stream=_ref())
    out = Envelope.decode(env.encode())
    assert out.stream == _ref()
    grandchild = out.child(a=1).child(b=2)
    assert Envelope.decode(grandchild.encode()).stream == _ref()
    assert Envelope.decode(Envelope("still").encode()).stream is None


def test_previous_index_chains_the_frames_of_a_stream() -> None:
    assert _ref().previous_index == 12 - 1 - 2 - 3 - 4
    assert _ref(index=0, sampled_out=0, dropped=0, missed=0).previous_index == -1


@pytest.mark.parametrize(
    ("sr", "fragment"),
    [
        ([1], "not a map"),
        ({"index": 1}, "stream id"),
        ({"id": "", "index": 1}, "stream id"),
        ({"id": "c", "index": -1}, "non-negative"),
        ({"id": "c", "index": True}, "non-negative"),
        ({"id": "c", "index": 1, "dropped": "3"}, "non-negative"),
        ({"id": "c", "index": 1, "pts": 1.5}, "pts"),
        ({"id": "c", "index": 1, "tb": [1, 0]}, "time base"),
        ({"id": "c", "index": 1, "tb": [1]}, "time base"),
        ({"id": "c", "index": 1, "size": [0, 5]}, "size"),
    ],
)
def test_bad_stream_refs_raise_envelope_error(sr: object, fragment: str) -> None:
    with pytest.raises(EnvelopeError, match=fragment):
        Envelope.decode(_doc(sr=sr))
