"""Decompression bombs, truncations and slow containers are refused with a reason, quickly and without decoding
them at full size; legitimate files of the same shapes still decode."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from visionpipe.services.decode.backends import CpuDecoder
from visionpipe.services.decode.images import BadImage, check_header, letterbox_cpu
from visionpipe.services.decode.pixels import PixelBudget
from visionpipe.settings import DecodeSettings, LimitSettings

LIMITS = LimitSettings()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, raw: bytes, *, colour: int = 2, depth: int = 8, interlace: int = 0) -> bytes:
    """A PNG whose IDAT is ``raw`` deflated: it may hold fewer rows than the header declares."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def jpeg(width: int = 64, height: int = 64, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def with_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with another size in its frame header (SOF0)."""
    at = data.find(b"\xff\xc0") + 5
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


def after_app0(data: bytes, insert: bytes) -> bytes:
    at = 4 + int.from_bytes(data[4:6], "big")
    return data[:at] + insert + data[at:]


def refused(data: bytes, words: str) -> float:
    """Seconds it took to refuse ``data`` with a reason holding ``words``."""
    t0 = time.perf_counter()
    with pytest.raises(BadImage) as info:
        letterbox_cpu(data, 320, LIMITS, 114)
    assert words in info.value.reason, info.value.reason
    return time.perf_counter() - t0


def test_a_300_byte_png_declaring_7000_squared_is_refused_from_its_header() -> None:
    bomb = png(7000, 7000, b"\x00" * (1 + 7000 * 3) * 10)
    assert len(bomb) < 400
    with pytest.raises(BadImage, match=r"truncated PNG: .* cannot inflate to the 147007000"):
        check_header(bomb, LIMITS)  # the gateway's check: never admitted
    assert refused(bomb, "truncated PNG") < 0.5


def test_a_png_whose_complete_stream_ends_rows_early_is_refused() -> None:
    rows = np.random.default_rng(0).integers(0, 255, (40, 1 + 300 * 3), dtype=np.uint8)
    rows[:, 0] = 0
    short = png(300, 300, rows.tobytes())  # passes the ratio bound: random rows do not deflate
    check_header(short, LIMITS)
    refused(short, "truncated PNG: its image data holds 36040 of the 270300 bytes 300x300 pixels need")


@pytest.mark.parametrize("interlace", [0, 1])
def test_a_complete_png_of_one_colour_still_decodes(interlace: int) -> None:
    img = Image.new("RGB", (2000, 1500), (0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG", interlace=interlace)
    arr, geo = letterbox_cpu(buf.getvalue(), 320, LIMITS, 114)
    assert (geo.width, geo.height) == (2000, 1500) and arr[160, 160].tolist() == [0, 0, 0]


def test_a_600_byte_jpeg_declaring_6000_squared_is_refused_from_its_header() -> None:
    bomb = with_size(jpeg(), 6000, 6000)
    with pytest.raises(BadImage, match=r"truncated JPEG: .* bytes of image data cannot hold the 843750 blocks"):
        check_header(bomb, LIMITS)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_large_jpeg_of_one_colour_still_decodes(progressive: bool) -> None:
    data = jpeg(4000, 3000, quality=50, progressive=progressive, optimize=True)
    _, geo = letterbox_cpu(data, 320, LIMITS, 114)
    assert (geo.width, geo.height) == (4000, 3000)


@pytest.mark.parametrize("fill", [b"\x00", b"\xab", b"\xff"])
def test_megabytes_of_junk_between_jpeg_markers_are_refused_at_once(fill: bytes) -> None:
    junk = after_app0(jpeg(), fill * 20_000_000)
    assert refused(junk, "bytes of junk") < 0.5  # Pillow alone walks it byte by byte in Python: seconds


def test_a_few_junk_bytes_are_tolerated_as_libjpeg_tolerates_them() -> None:
    arr, _ = letterbox_cpu(after_app0(jpeg(), b"\x00" * 100), 64, LIMITS, 114)
    assert abs(int(arr[32, 32, 0]) - 200) < 10


def test_thousands_of_jpeg_segments_are_refused() -> None:
    many = after_app0(jpeg(), b"\xff\xfe\x00\x02" * 5000)  # empty comments
    assert refused(many, "more than 1024 marker segments") < 0.5


def test_the_pixel_budget_bounds_what_threads_decode_at_once() -> None:
    budget = PixelBudget(100)
    peak, lock = [0], threading.Lock()

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 30, 500, 10) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 100 and budget.used == 0


def test_decode_threads_default_to_the_cores_up_to_eight() -> None:
    decoder = CpuDecoder(DecodeSettings(), LIMITS)
    try:
        assert 1 <= decoder.threads <= 8 and decoder.budget.total == LIMITS.decode_max_pixels
    finally:
        decoder.close()
