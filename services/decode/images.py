"""Checking, decoding and letterboxing one image on the CPU.

Every decode path (DALI, nvJPEG, CPU) shares the checks and the letterbox
geometry here, so a box maps back to original pixels the same way whichever
path decoded its image, and a bad input gets the same reason everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from visionpipe.services.decode import integrity
from visionpipe.services.decode.pixels import (
    SWAPS_AXES,
    PixelBudget,
    exif_orientation,
    flat,
    has_alpha,
    is_deep,
    orient,
    to_rgb,
)
from visionpipe.settings import LimitSettings

JPEG_SOI = b"\xff\xd8"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a phone's JPEG with more pictures after the first (which is what we decode)


class BadImage(ValueError):
    """Input that will never decode: poison, dead-lettered at once with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Geometry:
    """Where the resized image sits in the square: ``x_letterbox = x_original * scale + pad``."""

    width: int
    height: int
    size: int
    resized_w: int
    resized_h: int
    orientation: int = 1  # the EXIF orientation applied: width and height are as the image is displayed

    @classmethod
    def fit(cls, width: int, height: int, size: int, orientation: int = 1) -> Geometry:
        scale = min(size / width, size / height)
        rw, rh = max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))
        return cls(width, height, size, rw, rh, orientation)

    @property
    def scale(self) -> tuple[float, float]:
        return self.resized_w / self.width, self.resized_h / self.height

    @property
    def pad(self) -> tuple[int, int]:
        return (self.size - self.resized_w) // 2, (self.size - self.resized_h) // 2


@dataclass(frozen=True)
class Header:
    """What the header says: the size as displayed (after the EXIF orientation), the pixel mode, the orientation."""

    format: str
    width: int
    height: int
    mode: str = "RGB"
    orientation: int = 1
    transparent: bool = False

    @property
    def is_jpeg(self) -> bool:
        return self.format in JPEG_FORMATS

    @property
    def plain(self) -> bool:
        """8-bit RGB or greyscale with no transparency: what every decode path turns into the same RGB."""
        return self.mode in ("RGB", "L") and not self.transparent

    def stored(self, width: int, height: int) -> tuple[int, int]:
        """A displayed (width, height) in the file's own orientation."""
        return (height, width) if self.orientation in SWAPS_AXES else (width, height)


@functools.cache
def _readable(names: tuple[str, ...]) -> tuple[str, ...]:
    Image.init()
    return tuple(n.upper() for n in names if n.upper() in Image.OPEN)


def readable(limits: LimitSettings) -> tuple[str, ...]:
    """The accepted formats this Pillow can open (a build without AVIF just does not accept AVIF)."""
    return _readable(tuple(limits.image_formats))


def check_header(data: bytes, limits: LimitSettings) -> Header:
    """Read only the header; refuse empty, oversized, unknown, malformed or too-many-pixel inputs before decoding.

    Beside Pillow's header, the container is checked where Pillow would be slow or fooled (:mod:`.integrity`):
    junk between JPEG markers, and files too small to hold the pixels they declare.
    """
    if not data:
        raise BadImage("empty image")
    if len(data) > limits.max_image_bytes:
        raise BadImage(f"image of {len(data)} bytes exceeds the limit of {limits.max_image_bytes}")
    try:
        _walk_container(data)
        with Image.open(io.BytesIO(data), formats=readable(limits)) as img:
            fmt, (width, height), mode = img.format or "unknown", img.size, img.mode
            orientation, transparent = exif_orientation(img), has_alpha(img)
    except integrity.Malformed as exc:  # a broken container reads as Pillow's refusals do
        raise BadImage(f"not an image: {exc}") from None
    except UnidentifiedImageError:
        accepted = ", ".join(readable(limits))
        raise BadImage(f"not an image: format not recognised (accepted: {accepted})") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"too many pixels: {exc}") from None
    except Exception as exc:  # Pillow's plugins raise assorted types for a malformed header
        raise BadImage(f"not an image: {type(exc).__name__}: {exc}") from None
    if width <= 0 or height <= 0:
        raise BadImage(f"image declares an empty size {width}x{height}")
    if width * height > limits.max_image_pixels:
        raise BadImage(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {limits.max_image_pixels}"
        )
    _check_size(data, fmt, width, height)
    if orientation in SWAPS_AXES:
        width, height = height, width
    return Header(fmt, width, height, mode, orientation, transparent)


def _walk_container(data: bytes) -> None:
    """Before Pillow, whose own walks over junk, chunks and blocks are slow in Python."""
    if data.startswith(JPEG_SOI):
        integrity.jpeg_frame(data)
    elif data.startswith(integrity.PNG_SIGNATURE):
        integrity.check_png_chunks(data)
    elif data.startswith(GIF_SIGNATURES):
        integrity.check_gif_blocks(data)


def _check_size(data: bytes, fmt: str, width: int, height: int) -> None:
    """Refuse a file too small for the pixels it declares (a bomb of a few hundred bytes)."""
    try:
        if fmt in JPEG_FORMATS:
            integrity.check_jpeg(data, width, height)
        elif fmt == "PNG":
            integrity.check_png_size(data)
    except integrity.Malformed as exc:
        raise BadImage(str(exc)) from None


def letterbox_cpu(
    data: bytes, size: int, limits: LimitSettings, pad_value: int, budget: PixelBudget | None = None
) -> tuple[np.ndarray, Geometry]:
    """Decode, resize and pad one image to ``size``² RGB uint8 HWC; raises BadImage for bad input."""
    resized, geo = fit_cpu(data, size, limits, budget)
    return place(resized, geo, pad_value), geo


def fit_cpu(
    data: bytes, size: int, limits: LimitSettings, budget: PixelBudget | None = None
) -> tuple[np.ndarray, Geometry]:
    """Decode and resize one image to fit ``size``², without the padding: what the decode stage sends.

    JPEGs are decoded with libjpeg's DCT scaling (``draft``) at the smallest
    power-of-two reduction still at least the target size: a 1080p frame
    letterboxed to 640 decodes at 960x540, about three times faster. ``budget``
    bounds the pixels this process decodes at once; the EXIF orientation is applied.
    """
    header = check_header(data, limits)
    geo = Geometry.fit(header.width, header.height, size, header.orientation)
    target = header.stored(geo.resized_w, geo.resized_h)
    try:
        if header.format == "PNG":
            integrity.check_png_data(data)
        with Image.open(io.BytesIO(data), formats=readable(limits)) as img:
            if header.is_jpeg:
                img.draft("RGB", target)
            with budget.hold(img.width * img.height) if budget is not None else contextlib.nullcontext():
                img.load()
                small = _resized(img, target)
                del img
            rgb = orient(small, header.orientation)
    except integrity.Malformed as exc:
        raise BadImage(str(exc)) from None
    except Exception as exc:  # truncated data, corrupt entropy coding, unsupported modes
        raise BadImage(f"cannot decode {header.format}: {type(exc).__name__}: {exc}") from None
    return np.asarray(rgb), geo


def _resized(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """RGB at ``target`` (in the file's orientation); deep modes resized first, as the scaling reads every value."""
    if is_deep(img.mode):
        small = img if img.size == target else img.resize(target, Image.Resampling.BILINEAR)
        return to_rgb(small)
    rgb = to_rgb(flat(img))
    return rgb if rgb.size == target else rgb.resize(target, Image.Resampling.BILINEAR)


def place(resized: np.ndarray, geo: Geometry, pad_value: int) -> np.ndarray:
    """Put a resized HWC image in the middle of a ``size``² canvas of ``pad_value``."""
    canvas = np.full((geo.size, geo.size, 3), pad_value, dtype=np.uint8)
    px, py = geo.pad
    canvas[py : py + geo.resized_h, px : px + geo.resized_w] = resized
    return canvas
