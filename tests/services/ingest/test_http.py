"""HTTP sources from a real HTTP server on loopback: MPEG-TS and an HLS playlist, and a URL that is not there."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest

from tests.services.ingest.helpers import image, published, registry, wait_until
from tests.services.ingest.media import read_index, write_video
from visionpipe.settings import StreamSource

FRAMES = 60


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


def _hls(mp4: Path, folder: Path) -> Path:
    """An HLS VOD playlist of 1 s segments, written by FFmpeg's own muxer, without re-encoding."""
    playlist = folder / "index.m3u8"
    with (
        av.open(str(mp4)) as src,
        av.open(
            str(playlist),
            "w",
            format="hls",
            options={
                "hls_time": "1",
                "hls_list_size": "0",
                "hls_playlist_type": "vod",
                "hls_segment_filename": str(folder / "seg%03d.ts"),
            },
        ) as out,
    ):
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)
    return playlist


async def test_mpegts_and_hls_over_http_arrive_whole_and_in_order(http_root: tuple[str, Path], ns: str) -> None:
    base, root = http_root
    write_video(root / "clip.ts", FRAMES, fmt="mpegts")
    (root / "hls").mkdir()
    _hls(write_video(root / "clip.mp4", FRAMES), root / "hls")
    reg, broker, settings = await registry(ns)
    for sid, path in (("ts", "clip.ts"), ("hls", "hls/index.m3u8")):  # VOD over HTTP: not live, nothing to drop
        await reg.add(StreamSource(url=f"{base}/{path}", id=sid, live=False))
    await reg.wait_ended()
    envs = await published(broker, settings)
    for sid in ("ts", "hls"):
        info = reg.get(sid)
        assert info.state == "finished" and info.policy == "lossless" and info.counters.published == FRAMES, info
        mine = [e for e in envs if e.stream and e.stream.stream_id == sid]
        assert [read_index(image(e)) for e in mine] == list(range(FRAMES))


async def test_a_live_http_source_that_is_not_there_keeps_retrying_with_the_error_shown(
    http_root: tuple[str, Path], ns: str
) -> None:
    base, _ = http_root
    reg, _, _ = await registry(ns, reconnect_backoff_s=0.05, reconnect_backoff_max_s=0.2)
    await reg.add(StreamSource(url=f"{base}/no-such-stream.ts", id="gone"))
    await wait_until(lambda: reg.get("gone").counters.errors >= 3, timeout_s=20)
    info = await reg.remove("gone")
    assert info.last_error is not None and "404" in info.last_error
    assert info.counters.published == 0 and info.state == "removed"
