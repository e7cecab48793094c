"""What a source URL is and how to open it with PyAV: files, RTSP, HTTP (HLS, MPEG-TS), V4L2 devices, lavfi.

Opening is where sources differ; past ``av.open`` every one is a container with a video stream. The
options here come from measuring PyAV 18 (FFmpeg 8.1) against real servers: without a socket timeout a
stalled RTSP camera blocks ``decode()`` for ever; FFmpeg's default 5 s probe delays the first frame by
about a second on RTSP, where 0.2 s finds the H.264 parameters; FFmpeg's own HTTP ``reconnect*`` options
are left off because they hide a gap inside one read, where the ingest reconnects itself and counts it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
from av.container import InputContainer

from visionpipe.broker import redact_url
from visionpipe.settings import IngestSettings

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp", "srt", "rtmp")
LAVFI_PREFIX = "lavfi:"
V4L2_PREFIX = "/dev/video"
US = 1_000_000  # FFmpeg's network timeouts are in microseconds


class SourceError(ValueError):
    """A source URL that cannot name a video source."""


@dataclass(frozen=True)
class Source:
    url: str  # as the user gave it (may hold credentials: show ``shown`` instead)
    target: str  # what av.open gets
    kind: str  # file, rtsp, http, v4l2, lavfi, network
    format: str | None = None  # forced demuxer (v4l2, lavfi); None lets FFmpeg probe
    # Live sources never end by design: an end or an error is a lost connection, reconnected. Everything but
    # a file is live unless the stream says otherwise (an MPEG-TS file or HLS VOD playlist over HTTP).
    live: bool = True

    @property
    def shown(self) -> str:
        return redact_url(self.url)


def classify(url: str) -> Source:
    """The kind of source ``url`` names; raises SourceError for an empty or unsupported one."""
    url = url.strip()
    if not url:
        raise SourceError("empty source URL")
    if url.startswith(LAVFI_PREFIX):
        return Source(url, url[len(LAVFI_PREFIX) :], "lavfi", "lavfi")
    if url.startswith(V4L2_PREFIX):
        return Source(url, url, "v4l2", "v4l2")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return Source(url, urlsplit(url).path, "file", live=False)
    if scheme in ("rtsp", "rtsps"):
        return Source(url, url, "rtsp")
    if scheme in ("http", "https"):
        return Source(url, url, "http")
    if scheme in LIVE_SCHEMES:
        return Source(url, url, "network")
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise SourceError(f"unsupported source scheme {scheme!r} in {redact_url(url)}")
    return Source(url, url, "file", live=False)


def default_id(source: Source) -> str:
    """A stream id from the URL: the file's stem, or host and path; letters, digits, '.', '_' and '-' only."""
    if source.kind == "file":
        raw = Path(source.target).stem
    elif source.kind in ("v4l2", "lavfi"):
        raw = source.kind + "-" + source.target.rsplit("/", 1)[-1].split("=", 1)[0]
    else:
        parts = urlsplit(source.url)
        raw = f"{parts.hostname or 'stream'}{parts.path}"
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-._")
    return (cleaned or "stream")[:48]


def open_options(source: Source, settings: IngestSettings) -> dict[str, str]:
    """FFmpeg options for ``source``: socket timeouts and a short probe for network sources."""
    probe = str(int(settings.analyze_duration_s * US))
    io_timeout = str(int(settings.read_timeout_s * US))
    if source.kind == "rtsp":
        return {"rtsp_transport": "tcp", "timeout": io_timeout, "analyzeduration": probe}
    if source.kind in ("http", "network"):
        return {"rw_timeout": io_timeout, "analyzeduration": probe}
    return {}


def open_source(source: Source, settings: IngestSettings, hwaccel: bool) -> tuple[InputContainer, bool]:
    """Open ``source``; returns the container and whether NVDEC (CUDA hwaccel) is in use.

    PyAV's ``timeout=(open, read)`` interrupts a blocked open or read from inside FFmpeg, a second guard
    beside the socket timeouts (which only network protocols have). Hardware decoding is asked for with
    software fallback, and an open that still fails with it (no driver, no device: seen as EPERM) is retried
    without, once, so a GPU option never stops a stream from working.
    """
    kwargs: dict[str, Any] = {
        "format": source.format,
        "options": open_options(source, settings),
        "timeout": (settings.open_timeout_s, settings.read_timeout_s),
    }
    if hwaccel:
        try:
            from av.codec.hwaccel import HWAccel

            accel = HWAccel("cuda", allow_software_fallback=True)
            return av.open(source.target, hwaccel=accel, **kwargs), True
        except (av.FFmpegError, OSError) as exc:
            log.warning("%s: NVDEC unavailable (%s: %s); decoding on the CPU", source.shown, type(exc).__name__, exc)
    return av.open(source.target, **kwargs), False


def describe_error(exc: BaseException) -> str:
    """One line naming the failure, FFmpeg's own last log line included, credentials redacted."""
    text = f"{type(exc).__name__}: {exc}"
    return re.sub(r"([a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@", r"\1***:***@", text, flags=re.IGNORECASE)
