"""The streams API is no door into FFmpeg: file-writing and file-reading filter graphs, paths outside the allowed
folders, schemes not allowed and annotate are refused with a reason; the API takes the gateway's tokens."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.services.helpers import fast_overrides
from tests.services.ingest.helpers import wait_until
from tests.services.ingest.media import write_video
from visionpipe.services.ingest.api_check import Refused, check_api_source
from visionpipe.services.ingest.service import IngestService
from visionpipe.settings import IngestSettings, StreamSource, load_settings

TOKEN = "ingest-Tok3n"


def tricks(tmp: Path) -> list[tuple[str, str]]:
    """(source URL, words of the reason it is refused): what a hostile client would send."""
    outside = tmp.parent / "outside.mp4"
    link = tmp / "link.mp4"
    return [
        (f"lavfi:testsrc=d=1,metadata=mode=print:file={tmp}/written", "'metadata' is not taken"),
        ("lavfi:movie=/etc/hostname", "'movie' is not taken"),
        ("lavfi:amovie=/etc/hostname", "'amovie' is not taken"),
        ("lavfi:movie=http://127.0.0.1:9/x.mp4", "'movie' is not taken"),
        ("lavfi:sendcmd=f=/etc/hostname,testsrc", "'sendcmd' is not taken"),
        ("lavfi:testsrc,drawtext=textfile=/etc/hostname", "'drawtext' is not taken"),
        ("lavfi:color=c=red:graph_file=/etc/hostname", "names a file or URL"),
        ("lavfi:testsrc[out];movie=/etc/hostname[b]", "is not taken through the API (one plain chain"),
        ("lavfi:'movie=/etc/hostname'", "is not taken through the API (one plain chain"),
        ("lavfi:movie\\=x", "is not taken through the API (one plain chain"),
        ("lavfi:", "lavfi graph is empty"),
        ("/etc/hostname", "not under a folder of ingest.api_file_roots"),
        (f"{tmp}/../outside.mp4", "not under a folder of ingest.api_file_roots"),
        (f"file://{outside}", "not under a folder of ingest.api_file_roots"),
        (str(link), "not under a folder of ingest.api_file_roots"),  # a symlink out of the folder
        ("/dev/video0", "not under a folder of ingest.api_file_roots"),
        ("tcp://127.0.0.1:9", "the scheme 'tcp' is not taken"),
        ("udp://127.0.0.1:9", "the scheme 'udp' is not taken"),
        ("rtmp://127.0.0.1/live", "the scheme 'rtmp' is not taken"),
        ("concat:/etc/hostname|/etc/hostname", "unsupported source scheme"),
        ("gopher://x", "unsupported source scheme"),
    ]


def make_tricks(tmp: Path) -> list[tuple[str, str]]:
    (tmp.parent / "outside.mp4").write_bytes(b"x")
    link = tmp / "link.mp4"
    if not link.exists():
        os.symlink(tmp.parent / "outside.mp4", link)
    return tricks(tmp)


def test_each_trick_is_refused_with_its_reason(tmp_path: Path) -> None:
    roots = tmp_path / "videos"
    roots.mkdir()
    settings = IngestSettings(api_file_roots=[roots])
    for url, words in make_tricks(roots):
        with pytest.raises(ValueError) as info:
            check_api_source(StreamSource(url=url), settings)
        assert words in str(info.value), (url, str(info.value))
    with pytest.raises(Refused, match="annotate is not taken through the API"):
        check_api_source(StreamSource(url="lavfi:testsrc", annotate=str(roots / "out.mp4")), settings)
    for url in ("lavfi:testsrc2=size=320x240:rate=30", "lavfi:color=c=red:s=64x48,fps=5,format=rgb24", "rtsp://cam/1"):
        check_api_source(StreamSource(url=url), settings)  # what tests and cameras use is taken
    check_api_source(StreamSource(url=str(roots / "clip.mp4")), settings)


def listening_on(port: int) -> set[str]:
    """The addresses a TCP socket listens on at ``port``, from the kernel's table (IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def _http(port: int, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode() if body else None, headers)
    req.method = method
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_the_api_takes_the_gateways_tokens_binds_to_loopback_and_refuses_tricks(tmp_path: Path, ns: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# operators\n{TOKEN}\n")
    videos = tmp_path / "videos"
    videos.mkdir()
    clip = write_video(videos / "clip.mp4", 5)
    overrides = fast_overrides(ns, f"memory://{ns}")
    overrides["service"] = {**overrides["service"], "host": load_settings().service.host}  # the default
    overrides["gateway"] = {**overrides["gateway"], "tokens_file": str(tokens)}
    settings = load_settings(**overrides, ingest={"api_file_roots": [str(videos)]})
    service = IngestService(settings, with_stages=False)
    running = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: service.port != 0, timeout_s=20)
        port = service.port
        assert listening_on(port) == {"127.0.0.1"}, "the API listens on loopback only unless told otherwise"
        call = lambda *a: asyncio.to_thread(_http, port, *a)  # noqa: E731
        assert (await call("GET", "/v1/streams", None, None))[0] == 401
        assert (await call("GET", "/v1/streams", None, "# operators"))[0] == 401
        assert (await call("GET", "/v1/streams", None, TOKEN))[0] == 200
        for url, words in make_tricks(videos):
            status, doc = await call("POST", "/v1/streams", {"url": url}, TOKEN)
            assert status == 422 and words in doc["detail"], (url, status, doc)
        status, doc = await call("POST", "/v1/streams", {"url": "lavfi:testsrc", "annotate": "/tmp/x.mp4"}, TOKEN)
        assert status == 422 and "annotate is not taken" in doc["detail"]
        status, doc = await call("POST", "/v1/streams", {"url": str(clip), "id": "clip"}, TOKEN)
        assert status == 201 and doc["id"] == "clip"
        assert not (tmp_path / "videos" / "written").exists(), "the metadata filter wrote a file"
        assert (await call("GET", "/healthz", None, None))[0] == 200  # the probes stay open
    finally:
        service.stopping.set()
        await asyncio.wait_for(running, timeout=30)
