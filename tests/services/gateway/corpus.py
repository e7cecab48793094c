"""Hostile inputs for the front doors, made here, each with the answer the README documents for it.

Every case is an HTTP request and what must come back: the status, the error code (or, for an image the pipeline
must take, what its result must say), and words of the reason. The kinds: decompression bombs, truncations, wrong
formats, containers built to be slow, unusual modes (CMYK, 16-bit, alpha, palettes, animations), every EXIF
orientation, upload floods, and bodies that lie. Request-id reuse around the TTL edges and the streams API's
lavfi and path tricks need a running service's timing or another server, so the test builds those itself.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.services.decode.test_integrity import after_app0, png, with_size
from tests.services.decode.test_pixels import encode, marked, mode_cases, stored_for

JPEG = {"Content-Type": "image/jpeg"}
PNG = {"Content-Type": "image/png"}


@dataclass
class Case:
    name: str
    kind: str
    body: bytes
    status: int
    code: str = ""  # the error code; "" for a result
    words: str = ""  # in the reason (detail) of an error
    headers: dict[str, str] = field(default_factory=lambda: dict(JPEG))
    image: dict[str, int] | None = None  # what a 200's "image" must be
    check: Callable[[dict[str, Any]], bool] | None = None


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    noise = rng.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _jpeg(width: int = 320, height: int = 240, seed: int = 0, **kw: Any) -> bytes:
    return encode(_photo(width, height, seed), "JPEG", quality=85, **kw)


def _png(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(_photo(width, height, seed), "PNG", compress_level=1)


def _gif_bomb(width: int, height: int) -> bytes:
    small = encode(Image.new("P", (8, 8), 1), "GIF")
    at = small.find(b",")
    out = small[:6] + struct.pack("<HH", width, height) + small[10 : at + 5] + struct.pack("<HH", width, height)
    return out + small[at + 9 :]


def _rows_short_png(width: int, height: int, rows: int) -> bytes:
    raw = np.random.default_rng(rows).integers(0, 255, (rows, 1 + width * 3), dtype=np.uint8)
    raw[:, 0] = 0
    return png(width, height, raw.tobytes())


def bombs() -> list[Case]:
    out = []
    for i, (w, h, colour, depth, interlace) in enumerate(
        [
            (7000, 7000, 2, 8, 0),
            (5000, 9000, 2, 8, 0),
            (7000, 7000, 6, 8, 1),
            (6000, 6000, 0, 16, 0),
            (7000, 7000, 3, 8, 0),
        ]
    ):
        rows = b"\x00" * (1 + (w * depth * {0: 1, 2: 3, 3: 1, 6: 4}[colour] + 7) // 8) * 10
        body = png(w, h, rows, colour=colour, depth=depth, interlace=interlace)
        out.append(Case(f"png bomb {i} {w}x{h}", "bomb", body, 422, "bad_image", "truncated PNG", PNG))
    for i, (w, h, kw) in enumerate([(6000, 6000, {}), (7000, 5000, {}), (6500, 6500, {"progressive": True})]):
        body = with_size(_jpeg(64, 64, seed=i, **kw), w, h) if not kw else _progressive_bomb(w, h)
        out.append(Case(f"jpeg bomb {i} {w}x{h}", "bomb", body, 422, "bad_image", "truncated JPEG"))
    grey = encode(Image.new("L", (64, 64), 9), "JPEG")
    out.append(Case("grey jpeg bomb", "bomb", with_size(grey, 6000, 6000), 422, "bad_image", "truncated JPEG"))
    for w, h in [(6000, 6000), (4000, 7000)]:
        out.append(
            Case(f"gif bomb {w}x{h}", "bomb", _gif_bomb(w, h), 422, "bad_image", "", {"Content-Type": "image/gif"})
        )
    for w, h, rows in [(2000, 1500, 20), (1200, 1200, 300), (3000, 2000, 5)]:
        body = _rows_short_png(w, h, rows)
        out.append(Case(f"png stream ends at row {rows} of {h}", "bomb", body, 422, "bad_image", "truncated PNG", PNG))
    big = encode(Image.new("L", (8000, 7000)), "PNG")  # 56 MP: over the default 50 MP limit, 56 kB as a file
    out.append(Case("pixels over the limit", "bomb", big, 422, "bad_image", "exceeds the limit", PNG))
    return out


def _progressive_bomb(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (64, 64), (5, 5, 5)), "JPEG", progressive=True)
    at = data.find(b"\xff\xc2") + 5
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


def truncations() -> list[Case]:
    photo = _photo(320, 240, 3)
    files = {
        "jpeg": (encode(photo, "JPEG", quality=90), JPEG),
        "progressive jpeg": (encode(photo, "JPEG", progressive=True), JPEG),
        "png": (encode(photo, "PNG"), PNG),
        "webp": (encode(photo, "WEBP"), {"Content-Type": "image/webp"}),
        "gif": (encode(photo.convert("P"), "GIF"), {"Content-Type": "image/gif"}),
        "tiff": (encode(photo, "TIFF"), {"Content-Type": "image/tiff"}),
        "bmp": (encode(photo, "BMP"), {"Content-Type": "image/bmp"}),
    }
    out = []
    for name, (data, headers) in files.items():
        for frac in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
            cut = data[: max(12, int(len(data) * frac))]
            out.append(Case(f"{name} cut at {frac:.0%}", "truncated", cut, 422, "bad_image", "", headers))
    return out


def wrong_formats() -> list[Case]:
    rnd = random.Random(7)
    photo = _photo(64, 48, 1)
    cases = [
        ("pdf", b"%PDF-1.4\n" + rnd.randbytes(3000)),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>'),
        ("html", b"<html><body><img src=x onerror=alert(1)></body></html>"),
        ("zip", b"PK\x03\x04" + rnd.randbytes(500)),
        ("gzip", zlib.compress(b"x" * 1000)),
        ("elf", b"\x7fELF" + rnd.randbytes(300)),
        ("random bytes", rnd.randbytes(5000)),
        ("text", b"hello, I am a photo of a cat" * 10),
        ("tga", encode(photo, "TGA")),
        ("ico", encode(photo, "ICO")),
        ("pcx", encode(photo, "PCX")),
        ("sgi", encode(photo, "SGI")),
        ("ppm", encode(photo, "PPM")),
        ("eps header", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + rnd.randbytes(200)),
        ("jpeg magic only", b"\xff\xd8\xff"),
        ("png signature only", b"\x89PNG\r\n\x1a\n"),
    ]
    out = [
        Case(f"wrong format: {n}", "wrong format", b, 422, "bad_image", "", {"Content-Type": "image/png"})
        for n, b in cases
    ]
    out.append(Case("empty body", "wrong format", b"", 422, "bad_image", "empty image"))
    for ctype in ("text/plain", "application/json", "application/octet-stream"):
        out.append(
            Case(
                f"content type {ctype}",
                "wrong format",
                _jpeg(),
                415,
                "unsupported_media_type",
                "",
                {"Content-Type": ctype},
            )
        )
    return out


def slow_containers() -> list[Case]:
    base = _jpeg(64, 48)
    out = [
        Case(
            "24 MB of junk between JPEG markers",
            "slow container",
            after_app0(base, b"\x00" * 24_000_000),
            422,
            "bad_image",
            "junk",
        ),
        Case(
            "4 MB of 0xFF fill before a marker",
            "slow container",
            after_app0(base, b"\xff" * 4_000_000),
            422,
            "bad_image",
            "junk",
        ),
        Case(
            "4 MB of 0xAB between markers",
            "slow container",
            after_app0(base, b"\xab" * 4_000_000),
            422,
            "bad_image",
            "junk",
        ),
        Case(
            "5000 empty JPEG comments",
            "slow container",
            after_app0(base, b"\xff\xfe\x00\x02" * 5000),
            422,
            "bad_image",
            "marker segments",
        ),
    ]
    small = encode(Image.new("RGB", (8, 8)), "PNG")
    text = struct.pack(">I", 3) + b"tEXt" + b"a\x00b" + struct.pack(">I", zlib.crc32(b"tEXta\x00b"))
    out.append(
        Case(
            "200k PNG text chunks",
            "slow container",
            small[:33] + text * 200_000 + small[33:],
            422,
            "bad_image",
            "chunks before",
            PNG,
        )
    )
    gif = encode(Image.new("P", (8, 8)), "GIF")
    at = 13 + 3 * 2 ** ((gif[10] & 7) + 1) if gif[10] & 0x80 else 13
    out.append(
        Case(
            "500k GIF comment blocks",
            "slow container",
            gif[:at] + b"\x21\xfe\x01a\x00" * 500_000 + gif[at:],
            422,
            "bad_image",
            "extension blocks",
            {"Content-Type": "image/gif"},
        )
    )
    return out


def _size(width: int, height: int, orientation: int = 1) -> dict[str, int]:
    return {"width": width, "height": height, "orientation": orientation}


def unusual_modes() -> list[Case]:
    out = []
    for name, (data, _, _) in mode_cases().items():  # 64x32 pictures of every mode the pixel tests cover
        out.append(Case(f"mode {name}", "mode", data, 200, image=_size(64, 32), headers={"Content-Type": "image/png"}))
    sixteen_rgb = np.random.default_rng(1).integers(0, 65535, (30, 40, 3), dtype=np.uint16)
    buf = io.BytesIO()
    Image.frombytes("RGB", (40, 30), (sixteen_rgb >> 8).astype(np.uint8).tobytes()).save(buf, "PNG")
    out.append(Case("48-bit-like RGB PNG", "mode", buf.getvalue(), 200, image=_size(40, 30), headers=PNG))
    frames = [_photo(96, 64, s) for s in range(3)]
    for fmt, ctype in (("GIF", "image/gif"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        anim = io.BytesIO()
        frames[0].save(anim, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        out.append(
            Case(f"animated {fmt}", "mode", anim.getvalue(), 200, image=_size(96, 64), headers={"Content-Type": ctype})
        )
    out.append(Case("greyscale JPEG", "mode", encode(_photo(80, 60, 2).convert("L"), "JPEG"), 200, image=_size(80, 60)))
    out.append(Case("progressive JPEG", "mode", _jpeg(300, 200, 4, progressive=True), 200, image=_size(300, 200)))
    out.append(
        Case(
            "one-colour 2000x1500 PNG",
            "mode",
            encode(Image.new("RGB", (2000, 1500)), "PNG"),
            200,
            image=_size(2000, 1500),
            headers=PNG,
        )
    )
    return out


def orientations() -> list[Case]:
    out = []
    shown = marked(96, 64)
    kinds = (("JPEG", "image/jpeg", {}), ("JPEG", "image/jpeg", {"progressive": True}), ("PNG", "image/png", {}))
    for fmt, ctype, kw in (*kinds, ("WEBP", "image/webp", {})):
        for orientation in range(1, 9):
            exif = Image.Exif()
            exif[0x0112] = orientation
            data = encode(stored_for(shown, orientation), fmt, exif=exif.tobytes(), **kw)
            name = f"{'progressive ' if kw else ''}{fmt} EXIF orientation {orientation}"
            out.append(
                Case(name, "orientation", data, 200, image=_size(96, 64, orientation), headers={"Content-Type": ctype})
            )
    return out


def bodies_that_lie() -> list[Case]:
    good = _jpeg()
    form = b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b--\r\n'
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    return [
        Case("bad multipart", "body", b"--b\r\ngarbage", 422, "bad_multipart", "", multipart),
        Case("form without an image part", "body", form, 422, "bad_multipart", "no file part", multipart),
        Case("malformed X-Request-Id", "body", good, 422, "invalid_request", "", {**JPEG, "X-Request-Id": "../etc"}),
    ]


def as_form(case: Case) -> Case:
    """The same upload as the one file part of a multipart form: the same answer."""
    boundary = "corpus-b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x"\r\nContent-Type: '
    body = (
        head.encode()
        + case.headers["Content-Type"].encode()
        + b"\r\n\r\n"
        + case.body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return Case(f"{case.name} (multipart)", case.kind, body, case.status, case.code, case.words, form, case.image)


def images() -> list[Case]:
    """Every case sent as one upload to POST /v1/detect."""
    cases = [*bombs(), *truncations(), *wrong_formats(), *slow_containers(), *unusual_modes(), *orientations()]
    forms = [as_form(c) for c in cases[::9] if c.body and c.headers["Content-Type"].startswith("image/")]
    return [*cases, *forms, *bodies_that_lie()]


def large_photo_png(seed: int) -> bytes:
    """An image that takes the CPU decoder about a second: what makes a request slow enough to outlive its claim."""
    return _png(3000, 2000, seed)
