"""The ingest's small parts: the bounded hand-over, sampling, source kinds, putting results back in order, and the
labels drawn on annotated videos."""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpipe.envelope import StreamRef
from visionpipe.hops import caption
from visionpipe.services.ingest.annotate import LABEL_BACKGROUND, LABEL_TEXT, draw
from visionpipe.services.ingest.buffer import FrameBuffer
from visionpipe.services.ingest.order import Outcome, StreamOrder
from visionpipe.services.ingest.reader import Sampler
from visionpipe.services.ingest.source import SourceError, classify, default_id, describe_error


@dataclass
class Item:
    n: int
    absorbed: int = 0


def _merge(old: Item, new: Item) -> Item:
    return Item(new.n, new.absorbed + old.absorbed + 1)


async def test_newest_wins_never_blocks_and_accounts_for_every_drop() -> None:
    buf: FrameBuffer[Item] = FrameBuffer(1, True, _merge, asyncio.get_running_loop())
    stop = threading.Event()
    drops = sum(buf.put(Item(i), stop) for i in range(5))
    assert drops == 4 and len(buf) == 1
    (newest,) = await buf.take(10)
    assert newest == Item(4, absorbed=4)  # the four it pushed out are on its account


async def test_lossless_blocks_the_reader_until_room_and_gives_up_on_stop() -> None:
    buf: FrameBuffer[Item] = FrameBuffer(2, False, _merge, asyncio.get_running_loop())
    stop = threading.Event()
    results: list[int] = []
    reader = threading.Thread(target=lambda: results.extend(buf.put(Item(i), stop) for i in range(3)))
    reader.start()
    await asyncio.sleep(0.3)
    assert len(buf) == 2 and reader.is_alive()  # the third frame waits: reading is paused
    assert [i.n for i in await buf.take(1)] == [0]
    await asyncio.to_thread(reader.join, 2)
    assert results == [0, 0, 0] and [i.n for i in await buf.take(5)] == [1, 2]
    full = threading.Thread(target=lambda: results.extend(buf.put(Item(9), stop) for _ in range(3)))
    full.start()
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.to_thread(full.join, 2)
    assert results[-1] == -1 and not full.is_alive()


async def test_take_waits_for_a_thread_and_ends_after_close() -> None:
    buf: FrameBuffer[Item] = FrameBuffer(4, False, _merge, asyncio.get_running_loop())
    waiter = asyncio.create_task(buf.take(4))
    await asyncio.sleep(0.05)
    threading.Thread(target=lambda: (buf.put(Item(1), threading.Event()), buf.close())).start()
    assert [i.n for i in await asyncio.wait_for(waiter, 2)] == [1]
    assert await asyncio.wait_for(buf.take(4), 2) == []


def test_sampler_keeps_the_first_frame_of_each_slot_and_restarts_on_a_jump_back() -> None:
    s = Sampler(10.0)
    kept = [i for i in range(60) if s.keep(i * 512 / 15360)]  # 30 fps in an MP4's 1/15360 time base
    assert kept == list(range(0, 60, 3))
    assert s.keep(0.0)  # pts restarted (a reconnect): not mistaken for the past
    assert all(Sampler(None).keep(t) for t in (0.0, 0.0, None))


@pytest.mark.parametrize(
    ("url", "kind", "live", "stream_id"),
    [
        ("/data/Front Door.mp4", "file", False, "Front-Door"),
        ("file:///data/clip.ts", "file", False, "clip"),
        ("rtsp://user:pw@cam1.local:554/live/main", "rtsp", True, "cam1.local-live-main"),
        ("https://example.org/hls/index.m3u8", "http", True, "example.org-hls-index.m3u8"),
        ("/dev/video0", "v4l2", True, "v4l2-video0"),
        ("lavfi:testsrc2=size=640x480:rate=30", "lavfi", True, "lavfi-testsrc2"),
    ],
)
def test_sources_are_classified_and_named(url: str, kind: str, live: bool, stream_id: str) -> None:
    src = classify(url)
    assert (src.kind, src.live, default_id(src)) == (kind, live, stream_id)
    assert "pw" not in src.shown


def test_unsupported_sources_and_credentials_in_errors() -> None:
    with pytest.raises(SourceError):
        classify("gopher://x/y")
    with pytest.raises(SourceError):
        classify("  ")
    text = describe_error(OSError("cannot open rtsp://admin:s3cret@10.0.0.1/live"))
    assert "s3cret" not in text and "10.0.0.1/live" in text


def _outcomes(indices: list[int], end: int) -> list[Outcome]:
    out, prev = [], -1
    for i in [*indices, end]:
        gap = i - prev - 1
        ref = StreamRef("s", i, 0, run="r", sampled_out=gap)
        out.append(Outcome(ref, {"frame_index": i}, end=i == end))
        prev = i
    return out


def test_results_come_out_in_frame_order_once_each_and_end_last() -> None:
    outcomes = _outcomes(list(range(0, 90, 3)), end=90)
    shuffled = outcomes + outcomes[:5]  # duplicates too (at-least-once)
    random.Random(1).shuffle(shuffled)
    order = StreamOrder()
    released = [o.ref.index for o in shuffled for o in order.add(o)]
    assert released == [*range(0, 90, 3), 90] and order.ended


def test_a_predecessor_that_never_comes_stalls_only_up_to_the_window() -> None:
    outcomes = _outcomes(list(range(10)), end=10)
    order = StreamOrder(window=3)
    released = [o for o in outcomes[1:] for o in order.add(o)]  # frame 0 never arrives
    assert [o.ref.index for o in released] == list(range(1, 11))
    assert released[0].record["gap_before"] is True


def test_a_frame_answered_deadline_exceeded_takes_its_place_in_the_chain() -> None:
    from visionpipe.envelope import Envelope
    from visionpipe.hops import Expiry
    from visionpipe.services.ingest.order import from_expiry, from_result

    first, second = StreamRef("cam", 0, 1, run="r"), StreamRef("cam", 1, 2, run="r")
    expired = Expiry("detector", 35.0, "queue").write(Envelope("cam.r.0", stream=first))
    assert Expiry.of(expired) is not None
    late = from_expiry(expired, Expiry("detector", 35.0, "queue"))
    done = from_result(Envelope("cam.r.1", payload={"objects": []}, stream=second))
    assert late is not None and done is not None
    order = StreamOrder()
    assert order.add(done) == []  # waits for frame 0
    out = order.add(late)
    assert [o.record["frame_index"] for o in out] == [0, 1]
    assert out[0].record["ok"] is False and out[0].record["deadline_exceeded"] is True
    assert "35 ms late" in out[0].record["error"] and out[0].record["stage"] == "detector"


CAT = {"label_name": "cat", "score": 0.5977, "top_k": [{"label": 281, "name": "tabby", "score": 0.31}]}


def _label_band(width: int, height: int) -> tuple[int, int]:
    """(rows of the label's background, white pixels in it) drawn above a box in a grey frame of this size."""
    frame = Image.new("RGB", (width, height), (128, 128, 128))
    box = [width * 0.3, height * 0.4, width * 0.7, height * 0.9]
    pixels = np.asarray(draw(frame, [{**CAT, "box": box}]))
    band = (pixels == LABEL_BACKGROUND).all(axis=-1)
    text = (pixels == LABEL_TEXT).all(axis=-1)[band.any(axis=1)]
    return int(band.any(axis=1).sum()), int(text.sum())


def test_annotated_labels_read_as_the_page_does_sized_to_the_frame_on_a_dark_band() -> None:
    assert caption(CAT) == "cat 60% · tabby"  # detector's label and score, then the classifier's guess
    page = (Path(__file__).parents[3] / "services" / "gateway" / "static" / "index.html").read_text()
    assert "(o.score * 100).toFixed(0)}%" in page and "` · ${o.top_k[0].name" in page  # the page's own rule
    small_rows, small_text = _label_band(640, 360)
    big_rows, big_text = _label_band(1920, 1080)
    assert small_rows >= 12 and small_text > 0  # legible on a small frame: white type on the band
    assert big_rows / small_rows == pytest.approx(3, rel=0.25)  # a 1080p frame's label is three times as tall
    assert big_text > 4 * small_text  # and its type, not only its band, grew with it
