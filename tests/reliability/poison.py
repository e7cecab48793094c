"""Malformed inputs, each built to be refused for a known reason, and the words that reason must contain.

Two layers of poison: *images* (a well-formed frame envelope whose image bytes
are bad: the decode stage refuses them by reading the header) and *messages*
(bytes on a stream that are not a valid envelope at all, or an envelope a
stage cannot use). Each item knows its request id when one can be recovered
from the bytes, so a test can check that the dead-letter entry names it.

The image kinds are crafted so that any JPEG/PNG decoder must refuse them
(zero or huge declared sizes, missing markers, cuts before the scan ends),
not merely damaged in ways a tolerant decoder might paper over.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass

import msgpack
import numpy as np
from PIL import Image

from visionpipe.envelope import SCHEMA_VERSION, Envelope
from visionpipe.ingress import Frame, frame_envelope
from visionpipe.samples import scene, scene_jpeg

# Limits the poison test's stages run under (small, so "over the limit" inputs stay small too).
MAX_IMAGE_BYTES = 200_000
MAX_MESSAGE_BYTES = 1_000_000
# Kinds that should reach the dead-letter stream, and how many of each: 200+ in all.
COUNTS = {
    "empty": 5,
    "truncated": 30,
    "corrupt-header": 30,
    "not-an-image": 20,
    "wrong-magic": 20,
    "bomb": 16,
    "over-byte-limit": 8,
    "no-image-field": 12,
    "malformed-msgpack": 25,
    "unknown-version": 15,
    "missing-fields": 15,
    "bad-array": 10,
    "over-message-limit": 3,
    "detector-input": 8,
    "classifier-input": 8,
}
# Words the dead-letter reason of each kind must contain (any of them).
REASONS = {
    "empty": ("empty",),
    "truncated": ("truncated", "cannot decode", "not an image"),
    "corrupt-header": ("not an image", "cannot decode", "empty size"),
    "not-an-image": ("not an image",),
    "wrong-magic": ("not an image",),
    "bomb": ("pixels",),
    "over-byte-limit": ("exceeds the limit",),
    "no-image-field": ("no image bytes",),
    "malformed-msgpack": ("not a msgpack envelope", "not a map", "empty message", "extension type"),
    "unknown-version": ("unknown schema version",),
    "missing-fields": ("request id", "unknown schema version"),
    "bad-array": ("array",),
    "over-message-limit": ("exceeds limit",),
    "detector-input": ("detector",),
    "classifier-input": ("classifier",),
}


# Kinds that are a well-formed frame around bad image bytes (the rest are bad messages).
IMAGE_KINDS = frozenset(
    {"empty", "truncated", "corrupt-header", "not-an-image", "wrong-magic", "bomb", "over-byte-limit"}
)


@dataclass(frozen=True)
class Poison:
    kind: str
    stream: str  # a StreamSettings field name: frames, tensors or crops
    data: bytes
    request_id: str | None  # None: the bytes carry no readable id


def _frame(rid: str, image: bytes) -> bytes:
    return frame_envelope(Frame(image, request_id=rid, source="poison")).encode()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` and whose data is one tiny zlib stream."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _sof_offset(jpeg: bytes) -> int:
    """Offset of the SOF0 segment's marker in a baseline JPEG."""
    i = 2
    while i < len(jpeg):
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker == 0xC0:
            return i
        i += 2 + length
    raise ValueError("no SOF0")


def _with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with the frame header's declared size replaced."""
    sof = _sof_offset(jpeg)
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def _scan_offset(jpeg: bytes) -> int:
    return jpeg.index(b"\xff\xda")


def _image_poison(kind: str, i: int, rng: random.Random) -> bytes:
    jpeg = scene_jpeg(160, 120, seed=1000 + i)
    if kind == "empty":
        return b""
    if kind == "truncated":
        # Cut anywhere from inside the header to just before the end-of-image marker.
        return jpeg[: rng.randrange(4, len(jpeg) - 2)]
    if kind == "corrupt-header":
        sof = _sof_offset(jpeg)
        variants = [
            lambda: _with_size(jpeg, 0, 120),  # zero width
            lambda: _with_size(jpeg, 160, 0),  # zero height (DNL), which no decoder here supports
            lambda: jpeg[:sof] + jpeg[sof + 19 :],  # no frame header at all
            lambda: jpeg[: _scan_offset(jpeg)] + b"\xff\xd9",  # headers, then end of image: no scan
            lambda: jpeg[: sof + 9] + b"\x00" + jpeg[sof + 10 :],  # zero components
        ]
        return variants[i % len(variants)]()
    if kind == "not-an-image":
        samples = [
            b"%PDF-1.7\n" + bytes(rng.randrange(256) for _ in range(200)),
            b"\x7fELF\x02\x01\x01" + bytes(64),
            b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(100)),
            b"<html><body>not a picture</body></html>",
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))),
        ]
        return samples[i % len(samples)]
    if kind == "wrong-magic":
        png = io.BytesIO()
        scene(64, 48, seed=i).save(png, format="PNG")
        good = [jpeg, png.getvalue()][i % 2]
        spoiled = bytearray(good)
        spoiled[i % 3] ^= 0xFF  # one of the magic bytes flipped
        return bytes(spoiled)
    if kind == "bomb":
        side = [20_000, 65_500, 100_000, 1_000_000][i % 4]
        if i % 2:
            return _png_header(side, side)
        return _with_size(jpeg, min(side, 65_535), min(side, 65_535))
    if kind == "over-byte-limit":
        noise = np.random.default_rng(i).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format="JPEG", quality=95)
        blob = buf.getvalue()
        assert len(blob) > MAX_IMAGE_BYTES, "noise compresses badly: over the limit by construction"
        return blob
    raise ValueError(kind)


def _message_poison(kind: str, rid: str, i: int, rng: random.Random) -> tuple[bytes, str | None]:
    good = Envelope(rid, source="poison", payload={"image": scene_jpeg(64, 48, seed=i)}).encode()
    if kind == "no-image-field":
        payload = [{}, {"image": "not bytes"}, {"image": None}, {"image": [1, 2, 3]}][i % 4]
        return Envelope(rid, source="poison", payload=payload).encode(), rid
    if kind == "malformed-msgpack":
        variants: list[bytes] = [
            good[: rng.randrange(1, len(good) - 1)],  # truncated envelope
            b"\xc1" + good,  # reserved, never-valid byte first
            msgpack.packb([1, 2, 3]),  # a list, not a map
            msgpack.packb(msgpack.ExtType(5, b"x")),  # extension types are refused
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
        ]
        return variants[i % len(variants)], None
    if kind == "unknown-version":
        doc = msgpack.unpackb(good, raw=False)
        doc["v"] = [SCHEMA_VERSION + 1, 0, "1", None, 99][i % 5]
        return msgpack.packb(doc, use_bin_type=True), rid
    if kind == "missing-fields":
        doc = msgpack.unpackb(good, raw=False)
        field = ["id", "v", "id"][i % 3]
        del doc[field]
        if field == "id" and i % 2:
            doc["id"] = ""  # present but empty: no more usable than absent
        return msgpack.packb(doc, use_bin_type=True), (None if field == "id" else rid)
    if kind == "bad-array":
        doc = msgpack.unpackb(good, raw=False)
        doc["a"] = [
            {"x": {"dtype": "object", "shape": [1], "data": b"\0" * 8}},
            {"x": {"dtype": "uint8", "shape": [4, 4], "data": b"\0" * 3}},
            {"x": {"dtype": "float32", "shape": [2**31, 2**31, 2**31], "data": b""}},
            {"x": {"dtype": "uint8", "shape": [1] * 40, "data": b"\0"}},
            {"x": {"dtype": "uint8", "shape": [-1], "data": b""}},
        ][i % 5]
        return msgpack.packb(doc, use_bin_type=True), rid
    if kind == "over-message-limit":
        return Envelope(rid, payload={"image": b"\0" * (MAX_MESSAGE_BYTES + 1000)}).encode(), rid
    raise ValueError(kind)


def _stage_poison(kind: str, rid: str, i: int) -> bytes:
    """Valid envelopes the detector or classifier cannot use: wrong shapes, dtypes, missing geometry."""
    env = Envelope(rid, source="poison", payload={"width": 160, "height": 120, "scale": [2.0, 2.0], "pad": [0, 40]})
    if kind == "detector-input":
        env.arrays["image"] = [
            np.zeros((10, 10, 3), np.uint8),
            np.zeros((320, 320, 3), np.float16),
            np.zeros((320, 320), np.uint8),
            np.zeros((0,), np.uint8),
        ][i % 4]
        if i >= 4:  # a right-shaped image without letterbox geometry
            env.arrays["image"] = np.zeros((320, 320, 3), np.uint8)
            env.payload = {"width": "wide"} if i % 2 else {}
    else:
        env.payload = {"width": 160, "height": 120, "objects": [{"box": [0, 0, 1, 1]}] * 2}
        env.arrays["crops"] = [
            np.zeros((2, 64, 64), np.uint8),
            np.zeros((2, 64, 64, 3), np.int64),
            np.zeros((3, 64, 64, 3), np.uint8),  # three crops for two boxes
            np.zeros((2, 1, 1, 3), np.uint8),
        ][i % 4]
        if i >= 4:
            del env.arrays["crops"]
    return env.encode()


def poison_inputs(tag: str, seed: int = 8) -> list[Poison]:
    """Every kind in :data:`COUNTS`, ids ``{tag}-{kind}-{n}``."""
    rng = random.Random(seed)
    out: list[Poison] = []
    for kind, count in COUNTS.items():
        for i in range(count):
            rid = f"{tag}-{kind}-{i}"
            if kind in IMAGE_KINDS:
                out.append(Poison(kind, "frames", _frame(rid, _image_poison(kind, i, rng)), rid))
            elif kind in ("detector-input", "classifier-input"):
                stream = "tensors" if kind == "detector-input" else "crops"
                out.append(Poison(kind, stream, _stage_poison(kind, rid, i), rid))
            else:
                data, known = _message_poison(kind, rid, i, rng)
                out.append(Poison(kind, "frames", data, known))
    return out
