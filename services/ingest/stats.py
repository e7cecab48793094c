"""What one stream has done so far: the counters behind the API's stats, the metrics and the end-of-stream message.

Every counter has one writer (the reader thread, or the publisher on the loop), so plain integers suffice;
a reader of the stats may see a value one frame old, never a torn one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StreamStats:
    decoded: int = 0  # frames out of the decoder (reader)
    sampled_out: int = 0  # skipped to keep the stream's fps (reader)
    dropped: int = 0  # pushed out by a newer frame while the pipeline was behind (reader), or left at removal
    missed: int = 0  # estimated lost while disconnected (reader)
    published: int = 0  # sent into the pipeline (publisher)
    reconnects: int = 0
    errors: int = 0
    corrupt_packets: int = 0  # packets FFmpeg flagged corrupt: damage that decodes without an error
    last_error: str | None = None
    last_index: int = -1  # index of the newest decoded frame
    session: int = 0
    decoder: str = ""
    width: int = 0
    height: int = 0
    source_fps: float = 0.0
    started_ns: int = field(default_factory=time.time_ns)
    last_frame_ns: int = 0

    def error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
