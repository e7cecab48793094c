"""Every pixel mode Pillow reads, as the RGB a viewer shows; EXIF orientation; a bound on pixels being decoded.

``Image.convert("RGB")`` is right for the common modes but not for all: a 16-bit greyscale PNG (``I;16``) is
clipped at 255 and comes out all white, ``I`` and ``F`` likewise, and alpha is dropped, so a transparent PNG shows
whatever colour its transparent pixels happen to hold (often black). Here:

* ``I;16*`` scales 0-65535 onto 0-255; ``I`` and ``F`` (32-bit, no nominal range) are scaled from the range their
  values use: within 0-255 as they are, within 0-65535 as 16-bit, 0-1 for floats, else their minimum to maximum;
* transparency (``RGBA``, ``LA``, ``PA``, a palette or greyscale image with a transparent entry) is laid over
  white, as a browser shows it on a white page;
* ``1``, ``L``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and the rest go through Pillow's own conversion.

The EXIF orientation (1-8) is applied the way every viewer applies it, so boxes come back in the image as
people see it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
DEEP = ("I", "F")  # and every "I;16..." mode
ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Pillow's transposes that undo each EXIF orientation (as ImageOps.exif_transpose does).
ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = frozenset({5, 6, 7, 8})


def is_deep(mode: str) -> bool:
    return mode in DEEP or mode.startswith("I;16")


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA or (img.mode in ("P", "L", "RGB") and "transparency" in img.info)


def flat(img: Image.Image) -> Image.Image:
    """A mode that resizes well with the colour a viewer shows: alpha laid over white, palettes expanded."""
    if has_alpha(img):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode in ("1", "P"):
        return img.convert("RGB" if img.mode == "P" else "L")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB of an image already :func:`flat` (or deep, resized small first: the scaling reads every value)."""
    if is_deep(img.mode):
        return Image.fromarray(_to_u8(np.asarray(img), img.mode.startswith("I;16")), "L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_u8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """0-255 from 16-bit samples (their nominal range), else from the range the values use."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if sixteen_bit:
        scale, lo = 255.0 / 65535.0, 0.0
    elif lo >= 0 and hi <= 1 and values.dtype.kind == "f":
        scale, lo = 255.0, 0.0
    elif lo >= 0 and hi <= 255:
        scale, lo = 1.0, 0.0
    elif lo >= 0 and hi <= 65535:
        scale, lo = 255.0 / 65535.0, 0.0
    else:
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((v - lo) * scale), 0, 255).astype(np.uint8)


def orient(img: Image.Image, orientation: int) -> Image.Image:
    method = ORIENT.get(orientation)
    return img if method is None else img.transpose(method)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8); 1 when absent, unreadable or out of range (as viewers treat it)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is ignored by viewers, and so here
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


class PixelBudget:
    """Pixels being decoded at once in this process, bounded: threads wait for room rather than all allocating.

    An image larger than the whole budget waits until it has the budget to itself.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        n = min(max(0, pixels), self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.used + n <= self.total)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()
