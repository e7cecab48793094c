"""Checks of an image's container that Pillow does not make, each fast on any input, hostile ones included.

* **JPEG markers, PNG chunks, GIF blocks.** Pillow skips junk between JPEG markers one byte at a time in Python:
  24 MB of it kept a thread (and, on the gateway, its event loop) busy for seconds; it walks a PNG's chunks and a
  GIF's extension blocks before the image data in Python too. They are walked here first, quickly
  (``bytes.find``, one step per chunk), and a file with more junk, segments, chunks or blocks than any encoder
  writes is refused before Pillow sees it.
* **Too little data for the pixels.** A 600-byte JPEG or a 300-byte PNG may declare 7000x7000 pixels; Pillow then
  decodes what is there and fills the rest, so a bomb of a few hundred bytes costs a full-size decode and answers
  with a grey or black picture. Every Huffman-coded JPEG needs at least one bit per 8x8 block of each component,
  and deflate cannot shrink data more than 1032 to 1, so a file too small for the pixels it declares is
  truncated, whatever its markers say: both are refused from the header alone.
* **A PNG whose image data ends early.** A complete zlib stream that inflates to fewer rows than the header
  declares is decoded without an error. :func:`check_png_data` inflates it (without keeping the output) and
  compares the size with what the header declares.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

# An encoder writes a few dozen segments before the scan (one per Huffman and quantisation table, APPn blocks
# such as EXIF, XMP and an ICC profile in up to 255 pieces); thousands are a file built to be slow.
MAX_JPEG_SEGMENTS = 1024
# libjpeg tolerates a few stray bytes between markers (it warns), and the standard allows 0xFF fill before a
# marker; megabytes of either are no encoder's.
MAX_JPEG_JUNK_BYTES = 64 * 1024
# Deflate's best case: a 258-byte match coded in one bit or two.
DEFLATE_MAX_RATIO = 1032
# Chunks walked in a PNG: libpng's 8 KiB IDAT chunks make about 3,200 for a 25 MB file; Pillow walks those before
# the image data in Python (a million empty text chunks: seconds), and an encoder writes a few dozen there.
MAX_PNG_CHUNKS = 65536
MAX_PNG_HEADER_CHUNKS = 1024
# GIF extension sub-blocks before the first image (Pillow reads each in Python): XMP's "magic trailer" is 257.
MAX_GIF_SUB_BLOCKS = 4096
INFLATE_STEP = 1024 * 1024

SOI, SOS, EOI = 0xD8, 0xDA, 0xD9
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows
# Start-of-frame markers, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
FILL = re.compile(rb"\xff+")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel of each PNG colour type.
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7: (x start, y start, x step, y step) of each pass.
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


class Malformed(ValueError):
    """The container is broken or built to be slow: the reason names what is wrong."""


@dataclass(frozen=True)
class JpegFrame:
    width: int
    height: int
    components: tuple[tuple[int, int], ...]  # (horizontal, vertical) sampling factor of each
    arithmetic: bool
    scan_bytes: int  # from the first scan's start to the end of the file


def _segment_length(data: bytes, pos: int) -> int:
    if pos + 2 > len(data):
        raise Malformed("truncated JPEG: its header is cut short")
    length = int.from_bytes(data[pos : pos + 2], "big")
    if length < 2:
        raise Malformed(f"JPEG segment of length {length}")
    return length


def _next_marker(data: bytes, pos: int, junk: int) -> tuple[int, int]:
    """The position of the next marker byte (past its 0xFF) and the junk and fill skipped so far."""
    if pos >= len(data):
        raise Malformed("truncated JPEG: it ends before its image data")
    if data[pos] != 0xFF:
        nxt = data.find(b"\xff", pos)
        junk += (len(data) if nxt < 0 else nxt) - pos
        if nxt < 0 or junk > MAX_JPEG_JUNK_BYTES:
            raise Malformed(f"corrupt JPEG: more than {junk} bytes of junk between markers")
        pos = nxt
    fill = FILL.match(data, pos)
    assert fill is not None
    # Fill bytes before a marker are legal, but Pillow walks them slower still than junk: bounded alike.
    junk += fill.end() - pos - 1
    if junk > MAX_JPEG_JUNK_BYTES:
        raise Malformed(f"corrupt JPEG: more than {junk} bytes of junk or fill between markers")
    if fill.end() >= len(data):
        raise Malformed("truncated JPEG: it ends before its image data")
    return fill.end(), junk


def jpeg_frame(data: bytes) -> JpegFrame:
    """Walk the marker segments up to the first scan; raise :class:`Malformed` for junk, excess or no frame."""
    pos, junk, segments, frame = 2, 0, 0, None
    while True:
        pos, junk = _next_marker(data, pos, junk)
        marker, pos = data[pos], pos + 1
        if marker in STANDALONE or marker == SOI:
            continue
        if marker == EOI:
            raise Malformed("truncated JPEG: it ends before its image data")
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise Malformed(f"corrupt JPEG: more than {MAX_JPEG_SEGMENTS} marker segments before the image data")
        length = _segment_length(data, pos)
        if marker in SOF and frame is None:
            frame = _frame(data[pos + 2 : pos + length], marker)
        if marker == SOS:
            if frame is None:
                raise Malformed("JPEG image data before any frame header")
            return JpegFrame(frame[0], frame[1], frame[2], marker in ARITHMETIC or frame[3], len(data) - pos)
        pos += length


def _frame(body: bytes, marker: int) -> tuple[int, int, tuple[tuple[int, int], ...], bool]:
    if len(body) < 6:
        raise Malformed("truncated JPEG: its frame header is cut short")
    height, width, count = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
    comps = tuple((body[6 + 3 * i + 1] >> 4, body[6 + 3 * i + 1] & 15) for i in range(count) if 8 + 3 * i < len(body))
    if len(comps) != count or not comps or any(h == 0 or v == 0 for h, v in comps):
        raise Malformed("JPEG frame header has bad components")
    return width, height, comps, marker in ARITHMETIC


def check_jpeg(data: bytes, width: int, height: int) -> None:
    """Refuse a JPEG whose scan is too short to hold one bit per 8x8 block (Huffman coding; arithmetic exempt)."""
    frame = jpeg_frame(data)
    if frame.arithmetic or (frame.width, frame.height) != (width, height):
        return  # Pillow read other sizes (a DNL marker): its own decode is the judge
    hmax, vmax = max(h for h, _ in frame.components), max(v for _, v in frame.components)
    blocks = sum(_ceil(_ceil(width * h, hmax), 8) * _ceil(_ceil(height * v, vmax), 8) for h, v in frame.components)
    if frame.scan_bytes * 8 < blocks:
        raise Malformed(
            f"truncated JPEG: {frame.scan_bytes} bytes of image data cannot hold the {blocks} blocks of "
            f"{width}x{height} pixels"
        )


def check_gif_blocks(data: bytes) -> None:
    """Refuse a GIF with more extension sub-blocks before its first image than any encoder writes."""
    pos = 13
    if len(data) > 10 and data[10] & 0x80:  # a global colour table follows the screen descriptor
        pos += 3 * 2 ** ((data[10] & 7) + 1)
    blocks = 0
    while pos < len(data) and data[pos] == 0x21:  # an extension: label, then sub-blocks up to an empty one
        pos += 2
        while pos < len(data) and data[pos]:
            blocks += 1
            if blocks > MAX_GIF_SUB_BLOCKS:
                raise Malformed(f"corrupt GIF: more than {MAX_GIF_SUB_BLOCKS} extension blocks before its image")
            pos += 1 + data[pos]
        pos += 1


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _png_chunks(data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """The IHDR body and the (offset, length) of every IDAT chunk before IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise Malformed("not a PNG")
    pos, ihdr = len(PNG_SIGNATURE), b""
    idat: list[tuple[int, int]] = []
    for count in range(MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            return ihdr, idat  # no IEND: what the data holds decides
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if kind == b"IHDR":
            ihdr = data[body : body + length]
        elif kind == b"IDAT":
            idat.append((body, min(length, max(0, len(data) - body))))
        elif kind == b"IEND":
            return ihdr, idat
        elif not idat and count >= MAX_PNG_HEADER_CHUNKS:
            raise Malformed(f"corrupt PNG: more than {MAX_PNG_HEADER_CHUNKS} chunks before its image data")
        pos = body + length + 4
    raise Malformed(f"corrupt PNG: more than {MAX_PNG_CHUNKS} chunks")


def _png_raw_bytes(ihdr: bytes) -> int:
    """What the IDAT stream inflates to for this header: every row of every pass with its filter byte."""
    if len(ihdr) < 13:
        raise Malformed("truncated PNG: its header is cut short")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[:13])
    bits = depth * PNG_CHANNELS.get(colour, 4)
    if not interlace:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in ADAM7:
        pw, ph = max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy)
        if pw and ph:
            total += ph * (1 + (pw * bits + 7) // 8)
    return total


def check_png_chunks(data: bytes) -> None:
    """Refuse a PNG with more chunks than any encoder writes, before Pillow walks them."""
    _png_chunks(data)


def check_png_size(data: bytes) -> None:
    """Refuse a PNG whose image data is too small to inflate to the pixels it declares (header only)."""
    ihdr, idat = _png_chunks(data)
    need = _png_raw_bytes(ihdr)
    have = sum(length for _, length in idat)
    if have * DEFLATE_MAX_RATIO < need:
        raise Malformed(f"truncated PNG: {have} bytes of image data cannot inflate to the {need} the header declares")


def check_png_data(data: bytes) -> None:
    """Inflate the image data, keeping none of it, and refuse a stream that holds fewer rows than declared."""
    ihdr, idat = _png_chunks(data)
    need = _png_raw_bytes(ihdr)
    inflate, got = zlib.decompressobj(), 0
    try:
        for offset, length in idat:
            pending = data[offset : offset + length]
            while pending and got <= need:
                got += len(inflate.decompress(pending, INFLATE_STEP))
                pending = inflate.unconsumed_tail
        while not inflate.eof and got <= need:
            out = inflate.decompress(b"", INFLATE_STEP)
            if not out:
                break
            got += len(out)
    except zlib.error as exc:
        raise Malformed(f"corrupt PNG image data: {exc}") from None
    if got < need:
        width, height = struct.unpack(">II", ihdr[:8])
        raise Malformed(f"truncated PNG: its image data holds {got} of the {need} bytes {width}x{height} pixels need")
