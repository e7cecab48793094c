"""The images a load run sends: files from a folder, or synthetic JPEGs of a given size.

Synthetic images are real JPEGs (noise plus a few solid shapes) rather than
flat colour, so that decode costs what it costs on photographs of that size
and the detector sees edges; a handful are made once and sent in rotation.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Enough distinct images that caches do not make every request identical, few enough to hold in memory.
SYNTHETIC_COUNT = 8
# Files read from a folder: a bound on memory, since every image is held for the whole run.
MAX_FOLDER_IMAGES = 512
MAX_SYNTHETIC_SIDE = 8192
JPEG_QUALITY = 85


@dataclass(frozen=True)
class ImageSet:
    """Encoded images sent in rotation, and where they came from (for the report)."""

    images: tuple[bytes, ...]
    description: str

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("an image set needs at least one image")

    def pick(self, index: int) -> bytes:
        return self.images[index % len(self.images)]

    @property
    def mean_bytes(self) -> float:
        return sum(len(i) for i in self.images) / len(self.images)


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` → (640, 480), with a clear error for anything else."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x480") from None
    if not (0 < width <= MAX_SYNTHETIC_SIDE and 0 < height <= MAX_SYNTHETIC_SIDE):
        raise ValueError(f"size {text!r}: each side must be 1..{MAX_SYNTHETIC_SIDE}")
    return width, height


def synthetic(width: int, height: int, count: int = SYNTHETIC_COUNT, seed: int = 0) -> ImageSet:
    """``count`` JPEGs of ``width``×``height``: noise with rectangles and ellipses on it."""
    rng = random.Random(seed)
    images = []
    for _ in range(count):
        noise = bytes(rng.getrandbits(8) for _ in range(min(width * height * 3, 64 * 64 * 3)))
        tile = Image.frombytes("RGB", (min(width, 64), min(height, 64)), noise[: min(width, 64) * min(height, 64) * 3])
        img = tile.resize((width, height), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(2, 5)):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            x1 = min(width, x0 + rng.randint(8, max(9, width // 3)))
            y1 = min(height, y0 + rng.randint(8, max(9, height // 3)))
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        images.append(buf.getvalue())
    return ImageSet(tuple(images), f"synthetic {width}x{height} JPEG ×{count}")


def from_folder(folder: Path, limit: int = MAX_FOLDER_IMAGES) -> ImageSet:
    """Image files in ``folder`` (not recursive), sorted by name, sent as their bytes unchanged."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return ImageSet(tuple(p.read_bytes() for p in paths), f"{len(paths)} files from {folder}")
