"""The annotated output video of a file stream: every source frame again, with the boxes and labels drawn.

Frames that were sampled out show the boxes of the last frame that has a result (held, as a tracker-less
overlay does), so the output keeps the source's frame rate and length whatever fps was ingested. Boxes come
in the sent image's pixels and are scaled back to the source's by the two sizes the result carries.

Each box is labelled as the gateway's page labels it (``visionpipe.hops.caption``: the detector's label and
score, then the classifier's top guess), in type sized to the frame, white on a dark band, so the label can be
read over any picture at any resolution.
"""

from __future__ import annotations

import bisect
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image, ImageDraw, ImageFont

from visionpipe.hops import caption

BOX_COLOUR = (255, 64, 0)
# Behind the label: the box's colour, darkened until white text on it has a contrast of about 7:1.
LABEL_BACKGROUND = (170, 36, 0)
LABEL_TEXT = (255, 255, 255)
# Type height as a share of the frame's shorter side (480p: 18 px, 1080p: 40 px), never below a legible minimum.
TEXT_SHARE = 1 / 27
MIN_TEXT_PX = 12
# Box outline: a share of the shorter side too, so a 4K frame's boxes do not turn into hairlines.
LINE_SHARE = 1 / 320
MIN_LINE_PX = 2


def sizes(width: int, height: int) -> tuple[int, int]:
    """(type height, box line width) in pixels for a frame of this size."""
    short = min(width, height)
    return max(MIN_TEXT_PX, round(short * TEXT_SHARE)), max(MIN_LINE_PX, round(short * LINE_SHARE))


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)  # Pillow's own scalable font, where it has FreeType
    except (OSError, TypeError):  # a Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def scaled_objects(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A result's objects with boxes in source pixels."""
    objects = record.get("objects") or []
    size, w, h = record.get("source_size"), record.get("width"), record.get("height")
    sx, sy = (size[0] / w, size[1] / h) if size and w and h else (1.0, 1.0)
    return [{**o, "box": [o["box"][0] * sx, o["box"][1] * sy, o["box"][2] * sx, o["box"][3] * sy]} for o in objects]


def draw(image: Image.Image, objects: list[dict[str, Any]]) -> Image.Image:
    pen = ImageDraw.Draw(image)
    text_px, line = sizes(*image.size)
    font = _font(text_px)
    pad = max(2, text_px // 5)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        pen.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
        label = caption(obj)
        left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
        band_h = bottom - top + 2 * pad
        # Above the box, or inside its top edge when the box touches the frame's top.
        by = y0 - band_h if y0 - band_h >= 0 else y0
        bx = min(max(x0, 0), max(image.width - (right - left) - 2 * pad, 0))
        pen.rectangle((bx, by, bx + right - left + 2 * pad, by + band_h), fill=LABEL_BACKGROUND)
        pen.text((bx + pad - left, by + pad - top), label, fill=LABEL_TEXT, font=font)
    return image


def write_annotated(source: str, out: Path, by_index: dict[int, list[dict[str, Any]]]) -> int:
    """Re-decode ``source`` and write it to ``out`` (H.264) with the objects of ``by_index`` drawn; frames written."""
    indices = sorted(by_index)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with av.open(source) as src, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        rate = vin.average_rate or Fraction(30)
        vout = dst.add_stream("libx264", rate=rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vout.options = {"preset": "veryfast"}
        for i, frame in enumerate(src.decode(vin)):
            at = bisect.bisect_right(indices, i) - 1
            image = frame.to_image()
            if at >= 0:
                image = draw(image, by_index[indices[at]])
            new = av.VideoFrame.from_image(image)
            new.pts = i
            new.time_base = 1 / Fraction(rate)
            dst.mux(vout.encode(new))
            written += 1
        dst.mux(vout.encode(None))
    return written
