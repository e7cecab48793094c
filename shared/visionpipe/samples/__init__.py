"""Sample images: the ones shipped with the package, and synthetic scenes for tests and benchmarks.

The shipped samples are four photographs from the scikit-image 0.26.0 wheel
(``skimage/data``: public domain or CC0, each one's statement quoted in
``samples/NOTICE.txt``), re-encoded as JPEG, and synthetic scenes of simple shapes,
two of them with the astronaut photo pasted in, for the sizes and formats a user
sends (640x480, 1080p, PNG). They exist so that ``visionpipe run`` shows real
objects and labels on a fresh machine with no arguments; they are not a benchmark
of detection quality. (matplotlib's Grace Hopper portrait, used before, is left
out: matplotlib states no licence for it.)

Regenerate the synthetic ones with ``python -m visionpipe.samples``; write
the pipeline benchmark's inputs with ``python -m visionpipe.samples --bench DIR``.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

SAMPLES_DIR = Path(__file__).resolve().parent
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# JPEG quality of the shipped samples: 80 keeps the five files well under the 1 MB budget.
SAMPLE_QUALITY = 80


def shipped_samples() -> list[Path]:
    """The sample images installed with the package, in name order."""
    return sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def scene(width: int, height: int, seed: int = 0, photo: Image.Image | None = None) -> Image.Image:
    """A synthetic street-like scene: sky and ground bands, boxes and discs, optionally a photo pasted in."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.45, 0.65))
    for y in range(height):  # vertical gradients compress well and look less flat than one colour
        if y < horizon:
            t = y / max(horizon, 1)
            colour = (int(90 + 80 * t), int(140 + 60 * t), int(210 + 30 * t))
        else:
            t = (y - horizon) / max(height - horizon, 1)
            colour = (int(90 - 40 * t), int(110 - 40 * t), int(70 - 30 * t))
        draw.line([(0, y), (width, y)], fill=colour)
    for _ in range(rng.randint(4, 9)):
        w, h = int(width * rng.uniform(0.05, 0.25)), int(height * rng.uniform(0.08, 0.3))
        x, y = rng.randint(0, width - w), rng.randint(horizon - h // 2, max(horizon - h // 2, height - h))
        fill = tuple(rng.randint(30, 230) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle([x, y, x + w, y + h], fill=fill, outline=(20, 20, 20), width=2)
        else:
            draw.ellipse([x, y, x + w, y + w], fill=fill, outline=(20, 20, 20), width=2)
    if photo is not None:
        target_h = int(height * 0.7)
        pic = photo.resize((int(photo.width * target_h / photo.height), target_h), Image.Resampling.BILINEAR)
        img.paste(pic, (int(width * rng.uniform(0.05, 0.6)), height - target_h - int(height * 0.05)))
    return img


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"optimize": True}))
    return buf.getvalue()


def scene_jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 85) -> bytes:
    """Encoded synthetic scene, for tests and benchmarks that need valid JPEG bytes of a given size."""
    return encode(scene(width, height, seed), "JPEG", quality)


def _photo(name: str = "astronaut-512x512.jpg") -> Image.Image:
    """A shipped photograph, to paste into synthetic scenes."""
    with Image.open(SAMPLES_DIR / name) as img:
        return img.convert("RGB")


def write_samples(folder: Path = SAMPLES_DIR) -> list[Path]:
    """(Re)create the synthetic samples beside the photos: two 640x480 JPEGs, one 1080p JPEG, one PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    plan = [
        ("street-640x480.jpg", 640, 480, 1, photo, "JPEG"),
        ("park-640x480.jpg", 640, 480, 2, None, "JPEG"),
        ("square-1920x1080.jpg", 1920, 1080, 4, photo, "JPEG"),
        ("shapes-480x360.png", 480, 360, 5, None, "PNG"),
    ]
    written = []
    for name, w, h, seed, pic, fmt in plan:
        path = folder / name
        path.write_bytes(encode(scene(w, h, seed, pic), fmt, SAMPLE_QUALITY))
        written.append(path)
    return written


def write_bench_set(folder: Path, vga: int = 48, hd: int = 16) -> None:
    """Inputs of the pipeline benchmark in benchmarks/RESULTS.md: ``vga/`` 640x480 and ``hd/`` 1920x1080 JPEGs."""
    photo = _photo()
    for sub, (w, h), count, base in (("vga", (640, 480), vga, 100), ("hd", (1920, 1080), hd, 200)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = scene(w, h, base + i, photo if i % 2 else None)
            (folder / sub / f"{i:03d}.jpg").write_bytes(encode(img, "JPEG", 85))
