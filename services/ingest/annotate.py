"""The annotated output video of a file stream: every source frame again, with the boxes and labels drawn.

Frames that were sampled out show the boxes of the last frame that has a result (held, as a tracker-less
overlay does), so the output keeps the source's frame rate and length whatever fps was ingested. Boxes come
in the sent image's pixels and are scaled back to the source's by the two sizes the result carries.
"""

from __future__ import annotations

import bisect
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image, ImageDraw

BOX_COLOUR = (255, 64, 0)
LINE_WIDTH = 2


def _label(obj: dict[str, Any]) -> str:
    top = obj.get("top_k") or []
    name = top[0]["name"] if top else obj.get("label_name", "")
    score = top[0]["score"] if top else obj.get("score", 0.0)
    return f"{name} {score:.2f}"


def scaled_objects(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A result's objects with boxes in source pixels."""
    objects = record.get("objects") or []
    size, w, h = record.get("source_size"), record.get("width"), record.get("height")
    sx, sy = (size[0] / w, size[1] / h) if size and w and h else (1.0, 1.0)
    return [{**o, "box": [o["box"][0] * sx, o["box"][1] * sy, o["box"][2] * sx, o["box"][3] * sy]} for o in objects]


def draw(image: Image.Image, objects: list[dict[str, Any]]) -> Image.Image:
    pen = ImageDraw.Draw(image)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        pen.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=LINE_WIDTH)
        pen.text((x0 + 3, y0 + 2), _label(obj), fill=BOX_COLOUR)
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
