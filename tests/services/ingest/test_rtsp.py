"""A real RTSP camera on loopback (GStreamer's server), cut mid-stream and brought back.

The camera stamps each frame with its own number, continued across its restart, so the test knows exactly
which frames were sent, which the ingest got, and how many the cut cost, independently of the ingest.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from tests.services.ingest.helpers import assert_chain, end_of, image, registry, wait_until
from tests.services.ingest.media import read_stamp
from tests.services.ingest.servers import RtspCamera, require_gst_rtsp
from visionpipe.envelope import Envelope
from visionpipe.settings import StreamSource

FRAMES_PER_SESSION = 30
OUTAGE_S = 1.5
# A client cannot know an outage's length exactly: the first frame after reconnecting carries the probe's
# delay (the probe's length, which the estimate takes off). Measured 1 frame over the truth at 30 fps; no estimate
# at all would be ~50 off.
GAP_TOLERANCE = 8


@pytest.fixture
def camera() -> Iterator[RtspCamera]:
    require_gst_rtsp()
    cam = RtspCamera().start()
    yield cam
    cam.stop()


async def test_a_cut_stream_reconnects_and_its_indices_show_exactly_the_counted_gap(
    camera: RtspCamera, ns: str
) -> None:
    reg, broker, settings = await registry(ns, reconnect_backoff_s=0.1)
    await reg.add(StreamSource(url=camera.url, id="cam"))
    frames_stream = settings.streams.name("frames")
    got: list[Envelope] = []

    async def pipeline() -> None:  # a consumer that keeps up, as a pipeline would
        while True:
            batch = await broker.consume(frames_stream, "decode", "t", 16, 0.1)
            got.extend(Envelope.decode(d.data) for d in batch)
            await broker.ack(frames_stream, "decode", batch)

    consumer = asyncio.create_task(pipeline())
    try:
        await wait_until(lambda: len(got) >= FRAMES_PER_SESSION, timeout_s=30)
        camera.kill()
        await asyncio.sleep(OUTAGE_S)
        camera.start()
        await wait_until(lambda: sum(1 for e in got if e.stream and e.stream.session) >= FRAMES_PER_SESSION, 30)
        final = await reg.remove("cam")
        await asyncio.sleep(0.3)
    finally:
        consumer.cancel()
    refs = [e.stream for e in got if e.stream]
    stamps = [read_stamp(image(e)) for e in got]

    # Within each connection the index is exact: camera number minus index is one constant per session.
    offsets = {s: {st - r.index for r, st in zip(refs, stamps, strict=True) if r.session == s} for s in (0, 1)}
    assert all(len(v) == 1 for v in offsets.values()), offsets

    # Across the cut: the index jumps by exactly the counted gap (`missed`), which estimates the true loss.
    (i,) = [k for k, (a, b) in enumerate(itertools.pairwise(refs)) if a.session != b.session]
    before, after = refs[i], refs[i + 1]
    assert after.index - before.index - 1 == after.missed + after.dropped + after.sampled_out
    true_gap = stamps[i + 1] - stamps[i] - 1 - after.dropped
    assert true_gap > OUTAGE_S * camera.fps * 0.8
    assert abs(after.missed - true_gap) <= GAP_TOLERANCE, (after.missed, true_gap)
    assert final.counters.reconnects >= 1 and final.counters.missed == after.missed
    assert final.last_error is not None  # the lost connection is reported, not hidden

    # Nothing vanished silently: every frame is accounted for in the chain, up to the end-of-stream message.
    assert_chain(got, await end_of(broker, settings, "cam"))
