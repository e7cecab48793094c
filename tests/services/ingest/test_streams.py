"""Streams on a real memory broker, judged by what they publish: lossless files, live drops, broken inputs."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from tests.services.ingest.helpers import assert_chain, end_of, image, published, registry, wait_until
from tests.services.ingest.media import read_index, write_video
from visionpipe.broker import BrokerError, MemoryBroker, Room
from visionpipe.envelope import REPLAYED, Envelope, Event
from visionpipe.ingress import ensure_pipeline_streams
from visionpipe.services.ingest.registry import StreamRegistry
from visionpipe.settings import StreamSource, load_settings
from visionpipe.topology import INGRESS


async def test_a_file_is_sampled_to_its_fps_losslessly_and_in_order(tmp_path: Path, ns: str) -> None:
    frames, fps, target = 60, 30, 10
    video = write_video(tmp_path / "clip.mp4", frames, fps=fps)
    # A watermark of 3 and a slow consumer: the file must pause, not drop.
    watermark, batch = 3, 2
    reg, broker, settings = await registry(ns, publish_batch=batch)
    settings.limits.ingress_high_watermark = watermark
    info = await reg.add(StreamSource(url=str(video), fps=target))
    envs: list[Envelope] = []
    frames_stream = settings.streams.name("frames")
    while len(envs) < frames * target // fps:
        await asyncio.sleep(0.05)
        assert reg.get(info.id).counters.published - len(envs) <= watermark - 1 + batch  # paused at the watermark
        got = await broker.consume(frames_stream, "decode", "t", 2, 1.0)
        assert got, f"stalled after {len(envs)} frames: {reg.get(info.id)}"
        assert reg.get(info.id).counters.dropped == 0
        envs += [Envelope.decode(d.data) for d in got]
        await broker.ack(frames_stream, "decode", got)
    await reg.wait_ended()
    indices = [e.stream.index for e in envs if e.stream]
    assert indices == list(range(0, frames, fps // target))
    assert [read_index(image(e)) for e in envs] == indices  # the content is the frame the index names
    end = await end_of(broker, settings, info.id)
    assert end.payload["end_of_stream"] | {"error": None} == end.payload["end_of_stream"]
    assert end.payload["end_of_stream"]["reason"] == "eof"
    assert end.payload["end_of_stream"]["published"] == len(indices)
    assert_chain(envs, end)
    final = reg.get(info.id)
    assert final.state == "finished" and final.counters.decoded == frames and final.counters.dropped == 0


async def test_a_live_stream_faster_than_the_pipeline_stays_bounded_and_counts_every_drop(ns: str) -> None:
    """No stage consumes: the pipeline is infinitely slow. The source decodes as fast as the CPU allows."""
    watermark = 8
    reg, broker, settings = await registry(ns, live_high_watermark=watermark)
    info = await reg.add(StreamSource(url="lavfi:testsrc2=size=640x480:rate=30", id="fast"))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await wait_until(lambda: reg.get("fast").counters.decoded >= 1500, timeout_s=60)
    assert await broker.length(settings.streams.name("frames")) <= watermark
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_kb) / 1024
    final = await reg.remove("fast")
    c = final.counters
    assert c.published <= watermark and c.dropped >= 1500 - watermark - 2
    assert c.decoded == c.published + c.dropped + c.sampled_out  # nothing unaccounted for
    frames = await published(broker, settings)
    end = await end_of(broker, settings, info.id)
    assert_chain(frames, end)
    refs = [e.stream for e in [*frames, end] if e.stream]
    assert sum(r.dropped for r in refs) == c.dropped  # in the results too: each frame says what was dropped before it
    assert end.payload["end_of_stream"]["reason"] == "removed"
    assert grown_mb < 100, f"max RSS grew {grown_mb:.0f} MB while 1500 frames came through"


async def test_broken_inputs_fail_their_own_stream_with_a_clear_error_and_the_others_go_on(
    tmp_path: Path, ns: str
) -> None:
    good = write_video(tmp_path / "good.mp4", 45)
    mp4 = good.read_bytes()
    ts = write_video(tmp_path / "whole.ts", 45, fmt="mpegts").read_bytes()
    (tmp_path / "garbage.mp4").write_bytes(bytes(range(256)) * 256)
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])  # moov at the end: gone
    (tmp_path / "cut.ts").write_bytes(ts[: len(ts) // 2 + 17])
    (tmp_path / "empty.mp4").write_bytes(b"")
    reg, broker, settings = await registry(ns)
    names = ["garbage", "cut", "empty", "missing"]
    for name in names:
        await reg.add(StreamSource(url=str(tmp_path / f"{name}.mp4"), id=name))
    await reg.add(StreamSource(url=str(tmp_path / "cut.ts"), id="cut-ts"))
    await reg.add(StreamSource(url=str(good), id="good"))
    await reg.wait_ended()
    streams = {s.id: s for s in reg.list()}
    assert streams["good"].state == "finished" and streams["good"].counters.published == 45
    for name in names:
        s = streams[name]
        assert s.state == "failed" and s.counters.published == 0, s
        assert s.last_error and ("InvalidDataError" in s.last_error or "FileNotFoundError" in s.last_error)
        end = (await end_of(broker, settings, name)).payload["end_of_stream"]
        assert end["reason"] == "failed" and end["error"] == s.last_error
    cut_ts = streams["cut-ts"]
    assert 0 < cut_ts.counters.published < 45
    # A cut MPEG-TS decodes to its end without raising: FFmpeg's log is the only sign, and the stream reports it.
    assert cut_ts.state == "finished" and cut_ts.counters.errors >= 1
    assert cut_ts.last_error is not None and "error while decoding" in cut_ts.last_error


async def test_nvdec_asked_for_without_a_usable_gpu_falls_back_to_the_cpu(tmp_path: Path, ns: str) -> None:
    video = write_video(tmp_path / "hw.mp4", 15)
    reg, _, _ = await registry(ns, hwaccel="cuda")
    await reg.add(StreamSource(url=str(video), id="hw"))
    await reg.wait_ended()
    info = reg.get("hw")
    assert info.state == "finished" and info.counters.published == 15
    if not torch.cuda.is_available():
        assert info.decoder == "h264"  # no "(nvdec)": the fallback is said, not hidden


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_nvdec_decodes_on_the_gpu(tmp_path: Path, ns: str) -> None:
    video = write_video(tmp_path / "hw.mp4", 30)
    reg, broker, settings = await registry(ns, hwaccel="cuda")
    await reg.add(StreamSource(url=str(video), id="hw"))
    await reg.wait_ended()
    info = reg.get("hw")
    assert info.decoder.endswith("(nvdec)") and info.counters.published == 30
    envs = await published(broker, settings)
    assert [read_index(image(e)) for e in envs] == list(range(30))


class LostReply(MemoryBroker):
    """A real in-process broker that loses the reply to one publish: the frames are in, the caller hears an error."""

    lost = 1

    async def publish_if_room(
        self, stream: str, messages: Sequence[bytes], keys: Sequence[str | None], room: Room
    ) -> dict[str, int] | None:
        held = await super().publish_if_room(stream, messages, keys, room)
        if held is None and self.lost:
            self.lost -= 1
            raise BrokerError("connection reset before the reply")
        return held


async def test_a_publish_whose_reply_was_lost_is_sent_again_as_the_same_request(ns: str) -> None:
    """The retry after a lost reply resends the same envelope: the same once-key, so the stages make one result."""
    settings = load_settings(streams={"prefix": ns}, broker={"url": f"memory://{ns}"}, ingest={"publish_batch": 1})
    broker = LostReply(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    reg = StreamRegistry(broker, settings)
    await reg.add(StreamSource(url="lavfi:testsrc=size=64x48:rate=5:duration=1", id="cam", live=False))
    await asyncio.wait_for(reg.wait_ended(), 30)
    frames = await published(broker, settings)
    by_id: dict[str, list[Envelope]] = {}
    for env in frames:
        by_id.setdefault(env.request_id, []).append(env)
    (twice,) = [copies for copies in by_id.values() if len(copies) > 1]  # the frame whose reply was lost
    assert len(twice) == 2
    stamps = {(e.ts(INGRESS, Event.ENQUEUED), e.ts(INGRESS, REPLAYED)) for e in twice}
    assert len(stamps) == 1, f"the retry is a new request to the stages (its own once-key): {stamps}"
    assert twice[0].encode() == twice[1].encode()
