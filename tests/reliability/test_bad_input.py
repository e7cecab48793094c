"""Item 4, bad input: 200+ malformed inputs through the running stages; each is dead-lettered with its
reason (and request id where the bytes still carry one), no stage process dies, and valid inputs
interleaved with them all produce results. Then hypothesis fuzzes the image checks and the
dead-letter decoding in process.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections import Counter

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.reliability.conftest import Pipeline
from tests.reliability.harness import Sink, frames, settle_backlogs
from tests.reliability.poison import COUNTS, REASONS, poison_inputs
from tests.services.helpers import good_images
from visionpipe.broker import DeadLetter, connect
from visionpipe.broker.dlq import Entry, _decode
from visionpipe.envelope import peek_request_id
from visionpipe.ingress import Frame, frame_envelope
from visionpipe.services.decode.images import BadImage, check_header, letterbox_cpu
from visionpipe.settings import LimitSettings
from visionpipe.topology import HOPS

# Valid frames spread among the poison: one after every this many bad messages.
INTERLEAVE_EVERY = 12
# Everything decode refuses goes in milliseconds; the valid frames go through the CPU detector.
POISON_TIMEOUT_S = 150
STAGE_OF_STREAM = {h.source: h.stage for h in HOPS}


@pytest.mark.timeout(240)
async def test_malformed_inputs_are_dead_lettered_and_valid_ones_finish(pipeline: Pipeline, tag: str) -> None:
    s = pipeline.settings
    poison = poison_inputs(tag)
    assert len(poison) >= 200 and {p.kind for p in poison} == set(COUNTS)
    valid = {f"{tag}-ok-{i}": img for i, img in enumerate([*good_images(), *frames(9, seed=4)])}
    valid_msgs = [frame_envelope(Frame(img, request_id=rid, source="valid")).encode() for rid, img in valid.items()]

    async with await connect(settings=s) as broker:
        sink = await Sink(broker, s).open()
        for n, p in enumerate(poison):
            if n % INTERLEAVE_EVERY == 0 and valid_msgs:
                await broker.publish(s.streams.name("frames"), [valid_msgs.pop()])
            await broker.publish(s.streams.name(p.stream), [p.data])
        for msg in valid_msgs:
            await broker.publish(s.streams.name("frames"), [msg])

        wanted = Counter(p.data for p in poison)

        def all_in() -> bool:
            got = Counter(d.data for d in sink.dead if d.data in wanted)
            return got == wanted and set(valid) <= sink.results.keys()

        def progress() -> str:
            got = Counter(d.data for d in sink.dead if d.data in wanted)
            return (
                f"dead-lettered {sum(got.values())}/{len(poison)}, "
                f"results {len(set(valid) & sink.results.keys())}/{len(valid)}"
            )

        await sink.until(all_in, POISON_TIMEOUT_S, progress)
        assert await settle_backlogs(broker, s, 30) == 0

    pipeline.procs.assert_alive()
    for p in pipeline.stages:
        assert p.readyz()[0], f"{p.stage} not ready after the poison:\n{p.log_tail()}"
    by_data = {d.data: d for d in sink.dead}
    for p in poison:
        d = by_data[p.data]
        assert any(w in d.reason for w in REASONS[p.kind]), (p.kind, p.request_id, d.reason)
        assert d.stage == STAGE_OF_STREAM[p.stream] and d.origin == s.streams.name(p.stream)
        if p.request_id is not None:
            assert d.request_id == p.request_id, (p.kind, d.request_id, d.reason)
    mine = [d for d in sink.dead if d.data in wanted]
    assert len(mine) == len(poison), "each malformed input dead-lettered exactly once"
    assert not {p.request_id for p in poison} & sink.results.keys(), "no poison produced a result"
    print(
        f"\nbad input: {len(poison)} malformed -> {len(mine)} dead-lettered "
        f"({sum(p.request_id is not None for p in poison)} with request id); "
        f"{len(valid)} valid interleaved -> {len(set(valid) & sink.results.keys())} results"
    )


# ---------------------------------------------------------------------------------------------------------
# In-process fuzzing of the checks the decode stage and `visionpipe dlq` apply to untrusted bytes.

LIMITS = LimitSettings(max_image_bytes=200_000, max_image_pixels=1_000_000)
LETTERBOX = 64


def _seed_images() -> list[bytes]:
    out = []
    img = Image.new("RGB", (40, 30), (10, 200, 30))
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid small image with a few bytes flipped, a cut, or random bytes spliced in."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_fuzz_image_checks_only_refuse_with_bad_image(data: bytes) -> None:
    """Whatever the bytes, decoding yields a letterboxed uint8 image or a BadImage with a reason: nothing else."""
    try:
        array, geo = letterbox_cpu(data, LETTERBOX, LIMITS, 114)
    except BadImage as exc:
        assert exc.reason
        return
    assert array.shape == (LETTERBOX, LETTERBOX, 3) and array.dtype == np.uint8
    assert 0 < geo.width * geo.height <= LIMITS.max_image_pixels


def _png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_fuzz_declared_size_is_refused_before_decoding(width: int, height: int) -> None:
    """A header declaring more pixels than the limit is refused from the header alone: no allocation."""
    data = _png(width, height)
    if width * height > LIMITS.max_image_pixels:
        with pytest.raises(BadImage, match="pixels"):
            check_header(data, LIMITS)
    else:
        with contextlib.suppress(BadImage):  # a tiny declared image with 16 bytes of data may or may not decode
            letterbox_cpu(data, LETTERBOX, LIMITS, 114)


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_values = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(["reason", "data", "stage", "origin", "id", "at", "x"]), _values, max_size=7
        ).map(lambda d: msgpack.packb(d, use_bin_type=True)),
        st.fixed_dictionaries({k: _leaf | _values for k in ("reason", "data", "stage", "origin", "id", "at")}).map(
            lambda d: msgpack.packb(d, use_bin_type=True)
        ),
    )
)
@example(msgpack.packb({"reason": "r", "data": 10**6, "stage": "s", "origin": "o"}))  # bytes(10**6) allocates
@example(msgpack.packb({"reason": "r", "data": b"x", "stage": "s", "origin": "o", "at": 1e300}))  # past time_t
def test_fuzz_dead_letter_entries_never_break_listing(raw: bytes) -> None:
    """`visionpipe dlq list` reads whatever sits on the stream: a junk entry is shown as such, never a crash."""
    record = _decode(raw)
    row = Entry("1-0", record, len(raw)).as_dict()
    assert row["id"] == "1-0"
    if record is not None:
        assert isinstance(record.data, bytes) and len(record.data) <= len(raw)
        assert isinstance(record, DeadLetter)
    assert peek_request_id(raw) is None or isinstance(peek_request_id(raw), str)
