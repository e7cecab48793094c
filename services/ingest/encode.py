"""What travels: each frame downscaled to the detector's working size and re-encoded as JPEG.

Measured (benchmarks/RESULTS.md, "Video ingest"): a 640x480 JPEG at q85 is ~25-100 KB and costs about 1 ms
to make and 1 ms to decode again, where a raw RGB frame is 900 KB (6.2 MB at 1080p) for every broker hop
and in the broker's memory. The decode stage letterboxes to ``decode.input_size`` anyway, so nothing the
detector could see is lost by downscaling first, and the decode stage takes the frame exactly as it takes
a still image. simplejpeg (libjpeg-turbo) encodes 1.5x faster than Pillow.
"""

from __future__ import annotations

import av
import simplejpeg
from av.video.reformatter import Interpolation, VideoReformatter


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the long side at most ``max_side``, aspect kept, both even (4:2:0 chroma needs it)."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


class FrameEncoder:
    """Downscale (area filter: no aliasing at 3x) and JPEG-encode frames; one per stream, one thread at a time."""

    def __init__(self, max_side: int, quality: int) -> None:
        self.max_side, self.quality = max_side, quality
        self._reformatter = VideoReformatter()

    def encode(self, frame: av.VideoFrame) -> bytes:
        w, h = target_size(frame.width, frame.height, self.max_side)
        rgb = self._reformatter.reformat(
            frame, format="rgb24", width=w, height=h, interpolation=Interpolation.AREA
        ).to_ndarray()
        return simplejpeg.encode_jpeg(rgb, quality=self.quality, colorspace="RGB", colorsubsampling="420")
