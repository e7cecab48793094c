"""The settings of processes and front doors: each service, video ingest and the HTTP gateway."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

# FFmpeg filters that only draw or reshape frames: none reads a file or opens a URL (movie, metadata, *file* do).
LAVFI_FILTERS = ("testsrc", "testsrc2", "smptebars", "smptehdbars", "color", "mandelbrot", "scale", "fps", "format")


class ServiceSettings(BaseModel):
    host: str = Field("127.0.0.1", description="address for /healthz, /readyz and /metrics; 0.0.0.0 in containers")
    # Unset, each command has its own (gateway 8000, decode 8001, detector 8002, classifier 8003, ingest 8010), so
    # processes started side by side on one machine do not collide; the containers set 8000 for all.
    port: int = Field(8000, ge=0, le=65535, description="port of /healthz, /readyz and /metrics; 0 picks a free one")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    consumer: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    group: str = Field("", description="consumer group; empty means the stage's name")
    log_level: str = "INFO"
    log_json: bool = False
    drain_grace_s: float = Field(25.0, description="time to finish in-flight batches on SIGTERM")
    # --drain: the input (and upstream) backlog must stay at zero this long before the stage exits.
    drain_idle_s: float = Field(1.5, ge=0.0, description="idle time at zero backlog before --drain exits")
    consume_timeout_s: float = Field(0.1, gt=0.0, description="longest a consume call blocks waiting for a message")
    # Two consumed batches in flight keep the executor fed while the previous batch is published and acked.
    max_inflight_batches: int = Field(2, ge=1, description="decode: consumed batches in flight")
    # Detector/classifier: one device batch computing and one filling, counted in images or crops (not messages), so a
    # device batch can reach executor.max_batch however few items one consume brings.
    prefetch_batches: float = Field(2.0, gt=0.0, description="DNN stages: device batches of requests kept in flight")
    reclaim_interval_s: float = Field(5.0, gt=0.0, description="how often a stage reclaims dead consumers' deliveries")
    # A delivery is kept ours (its idle time refreshed) while it is worked on, up to this long; past it, it is presumed
    # hung and reclaim may hand it to another consumer. Minutes: far beyond any batch, even a CPU detector's.
    work_timeout_s: float = Field(300.0, gt=0.0, description="longest a delivery is kept from reclaim while worked on")
    middleware: list[str] = Field(
        default_factory=list,
        description="policies of your own, 'package.module:Class' (built with no arguments), after the built-in ones",
    )


# A stream id travels in request ids, metric labels and URLs: short, and nothing that needs escaping.
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class StreamSource(BaseModel):
    """One source of ``visionpipe ingest``: where it is, how many frames a second go on, what to do when behind."""

    url: str = Field(
        description="a file path, rtsp://, http(s):// (HLS or MPEG-TS), a V4L2 device (/dev/videoN) or lavfi:GRAPH"
    )
    id: str | None = Field(None, pattern=STREAM_ID_PATTERN, description="stream id; default: made from the URL")
    fps: float | None = Field(None, gt=0, description="frames per second sent on; default: ingest.fps")
    policy: Literal["auto", "lossless", "latest"] = Field(
        "auto", description="lossless: backpressure pauses reading; latest: keep the newest frame, count drops"
    )
    live: bool | None = Field(None, description="reconnect on loss and default to `latest`; default: from the URL")
    annotate: str | None = Field(None, description="write the video with boxes and labels drawn here (files only)")
    deadline_ms: float | None = Field(None, gt=0, description="a frame is worthless this long after its capture")


class IngestSettings(BaseModel):
    sources: list[StreamSource] = Field(
        default_factory=list, description='streams started with the service: JSON list of URLs or {"url": ..., ...}'
    )
    fps: float | None = Field(None, gt=0, description="default frames per second sent on per stream; none: all")
    max_side: int | None = Field(None, ge=32, description="frames' long side sent on; default: decode.input_size")
    jpeg_quality: int = Field(85, ge=10, le=100)
    # Live streams keep little queued ahead of them: a frame waiting behind hundreds of others is stale, and
    # the newest-frame policy can only help when the backlog is short. Two decode batches keep decode fed.
    live_high_watermark: int = Field(32, ge=1, description="pipeline backlog above which live streams drop frames")
    file_queue_frames: int = Field(4, ge=1, description="decoded frames a file stream reads ahead")
    publish_batch: int = Field(8, ge=1, description="frames of a file stream published per call")
    open_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(3.0, gt=0, description="a live source silent this long is reconnected")
    # FFmpeg probes a live source for 5 s by default before the first frame; 0.2 s finds H.264 parameters.
    analyze_duration_s: float = Field(0.2, gt=0)
    reconnect_backoff_s: float = Field(0.25, gt=0)
    reconnect_backoff_max_s: float = Field(8.0, gt=0)
    hwaccel: Literal["none", "cuda"] = Field("none", description="cuda: NVDEC where FFmpeg and the driver allow")
    results_group: str = Field("ingest", description="consumer group of the results reader (--results, annotate)")
    api_schemes: list[str] = Field(default_factory=lambda: ["rtsp", "rtsps", "http", "https", "srt"])
    api_file_roots: list[Path] = Field(default_factory=list, description="folders the API may ingest files from")
    api_lavfi_filters: list[str] = Field(default_factory=lambda: list(LAVFI_FILTERS))

    @field_validator("sources", mode="before")
    @classmethod
    def _urls_as_sources(cls, value: Any) -> Any:
        """A bare URL is a source with the defaults."""
        if isinstance(value, list):
            return [{"url": v} if isinstance(v, str) else v for v in value]
        return value


class GatewaySettings(BaseModel):
    """The HTTP gateway (``visionpipe serve gateway``); it listens on ``service.host``/``service.port`` like every
    service, with its API, page, docs, probes and metrics on that one port."""

    wait_s: float = Field(10.0, gt=0.0, description="how long POST /v1/detect waits for its result by default")
    # A client may ask for longer with ?timeout_ms=, up to this: a wait holds a connection and a slot in memory.
    max_wait_s: float = Field(60.0, gt=0.0, description="longest wait a client may ask for with ?timeout_ms=")
    result_ttl_s: float = Field(600.0, gt=0.0, description="how long a result stays fetchable by GET /v1/results/{id}")
    # Memory store only (memory and Kafka brokers): the newest this many results are kept within their TTL.
    max_results: int = Field(10_000, ge=1, description="results kept in memory when the store is not Redis")
    results_url: str = Field(
        "", description="results store: redis://… or memory://; empty: the broker when it is Redis, else memory"
    )
    group: str = Field("gateway", description="consumer group on the results stream (per replica with memory)")
    feed: str = Field(
        "results-json", description="stream/topic (under streams.prefix) of every result as JSON; empty: none"
    )
    # A slow client must not hold a request slot for ever: idle gap between body chunks, and the whole body.
    body_chunk_timeout_s: float = Field(5.0, gt=0.0, description="longest gap between two chunks of a request body")
    body_timeout_s: float = Field(30.0, gt=0.0, description="longest time to receive a whole request body")
    header_timeout_s: float = Field(10.0, gt=0.0, description="longest time to receive a request's head")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line plus headers, in bytes")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 429 or 503: when a retry may find room")
    max_upload_bytes_in_flight: int = Field(128 * 1024**2, ge=1, description="bytes of uploads held at once; 429 past")
    tokens_file: Path | None = Field(None, description="file of bearer tokens, one per line; unset: no auth")
    protect_docs_and_metrics: bool = Field(False, description="tokens guard /metrics, /docs, /openapi.json too")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty: CORS off")
    grpc_port: int = Field(8081, ge=-1, le=65535, description="the OIP gRPC port (KServe v2); 0: a free one, -1: off")
    ingest_url: str = Field(
        "", description="API of a running `visionpipe ingest` (http://host:port): /v1/streams is served here too"
    )
