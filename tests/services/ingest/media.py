"""Test videos made here with PyAV, each frame carrying its own index as a barcode.

The barcode (16 black/white cells across the top eighth) survives H.264, downscaling and JPEG, so a test
reads back from a *result* exactly which source frame it came from, and can assert indices, gaps and
order against the content itself rather than against the ingest's own counting.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 16


def make_frame(i: int, w: int = 640, h: int = 480) -> np.ndarray:
    """RGB frame number ``i``: a moving gradient and square below the barcode, so the encoder has motion."""
    y = np.arange(h, dtype=np.int32)[:, None]
    x = np.arange(w, dtype=np.int32)[None, :]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = ((x + i * 4) % 256).astype(np.uint8)
    img[..., 1] = ((y + i * 2) % 256).astype(np.uint8)
    img[..., 2] = 96
    s = h // 6
    cx, cy = (i * 7) % (w - s), h // 2
    img[cy : cy + s, cx : cx + s] = (255, 255, 0)
    bh, cw = max(16, h // 8), w // BITS
    for b in range(BITS):
        img[:bh, b * cw : (b + 1) * cw] = 255 if (i >> (BITS - 1 - b)) & 1 else 0
    return img


def read_index(rgb: np.ndarray) -> int:
    """The frame index from a (rescaled, compressed) RGB frame made by :func:`make_frame`."""
    h, w = rgb.shape[:2]
    bh, cw = max(2, h // 8), w // BITS
    gray = rgb[:bh].mean(axis=2)
    n = 0
    for b in range(BITS):
        cell = gray[bh // 4 : bh * 3 // 4, b * cw + cw // 4 : b * cw + cw * 3 // 4]
        n = (n << 1) | (1 if cell.mean() > 127 else 0)
    return n


def write_video(
    path: Path, frames: int, fps: int = 30, w: int = 640, h: int = 480, fmt: str | None = None, gop: int = 30
) -> Path:
    """An H.264 video of ``frames`` barcoded frames (MP4 by suffix, or ``fmt="mpegts"``)."""
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.time_base = Fraction(1, fps)
        st.codec_context.gop_size = gop
        st.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, w, h), format="rgb24")
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


def decoded_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# --- the RTSP test camera (rtsp_server.py) ---------------------------------------------------------------------

STAMP_BITS = 32
STAMP_H = 24
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi lives; the venv's Python cannot import gi
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")


def _strip(y: np.ndarray, row: int) -> int:
    cw = y.shape[1] // STAMP_BITS
    band = y[row * STAMP_H + 6 : row * STAMP_H + STAMP_H - 6]
    n = 0
    for b in range(STAMP_BITS):
        n = (n << 1) | (1 if band[:, b * cw + cw // 4 : b * cw + cw * 3 // 4].mean() > 128 else 0)
    return n


def read_stamp(rgb: np.ndarray) -> int:
    """The frame index an rtsp_server.py frame carries (from RGB at the server's size)."""
    return _strip(rgb.mean(axis=2), 0)


def gst_rtsp_missing() -> str | None:
    """Why the RTSP test camera cannot run here, or None when it can."""
    import subprocess

    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        proc = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON}: {exc}"
    return None if proc.returncode == 0 else proc.stderr.decode(errors="replace")[-300:]
