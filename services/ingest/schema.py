"""What the streams API says about a stream (pydantic, so it appears in the OpenAPI schema as it is).

A request to add a stream is a :class:`visionpipe.settings.StreamSource`, the same model as an entry of
``ingest.sources``, so a stream configured at start and one added at run time are described alike.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class _Refusal(KeyError):
    """A KeyError (a lookup by stream id) whose message reads as written: KeyError's own str() quotes it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StreamExists(_Refusal):
    """A stream with this id is already registered (remove it first)."""


class UnknownStream(_Refusal):
    """No stream has this id."""


State = Literal["connecting", "running", "reconnecting", "draining", "finished", "failed", "removed"]


class StreamCounters(BaseModel):
    decoded: int = Field(description="frames out of the decoder")
    sampled_out: int = Field(description="skipped to keep the stream's fps")
    dropped: int = Field(description="live policy: pushed out by a newer frame while the pipeline was behind")
    missed: int = Field(description="estimated lost while the source was disconnected")
    published: int = Field(description="sent into the pipeline; each gives one result or one dead letter")
    reconnects: int
    errors: int
    corrupt_packets: int = Field(description="packets FFmpeg flagged corrupt (damage that raises no error)")


class StreamInfo(BaseModel):
    id: str
    run: str = Field(description="this incarnation of the id; results carry it in their stream reference")
    url: str = Field(description="the source URL, credentials redacted")
    kind: str
    live: bool
    policy: Literal["lossless", "latest"]
    fps: float | None = Field(description="frames per second sent on; null: every frame")
    state: State
    counters: StreamCounters
    last_error: str | None
    last_index: int = Field(description="index of the newest decoded frame; -1 before the first")
    session: int = Field(description="connections made after the first (reconnects that got through)")
    decoder: str
    width: int
    height: int
    source_fps: float
    annotate: str | None = None


class StreamList(BaseModel):
    streams: list[StreamInfo]
