"""Stage heartbeats through the broker: decoded as untrusted, liveness on the reader's clock, figures per stage."""

from __future__ import annotations

import time
from dataclasses import replace

import msgpack
import pytest

from visionpipe import topology
from visionpipe.broker import MemoryBroker
from visionpipe.settings import load_settings
from visionpipe.stage_state import MIN_STALE_S, READY, STARTING, STOPPING, StageBoard, StageState
from visionpipe.topology import CLASSIFIER, DECODE, DETECTOR


def state(stage: str, consumer: str = "c1", seq: int = 1, kind: str = READY, **kw: object) -> StageState:
    return StageState(stage, consumer, kind, seq, time.time_ns(), 0.25, **kw)  # type: ignore[arg-type]


def test_a_record_round_trips_and_foreign_bytes_are_skipped() -> None:
    s = state(DETECTOR, expected_s=0.1, minimum_s=0.02, batch_s=0.05, hop_s=0.001, rate=12.5, backlog=3)
    assert StageState.decode(s.encode()) == s
    fig = StageState.decode(s.encode()).figures()  # type: ignore[union-attr]
    assert fig is not None and fig.expected_s == 0.1 and fig.hop_s == 0.001
    doc = msgpack.unpackb(s.encode())
    for bad in (
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({**doc, "stage": "resize"}),
        msgpack.packb({**doc, "state": "dancing"}),
        msgpack.packb({**doc, "seq": "7"}),
        msgpack.packb({**doc, "expected_s": float("nan")}),
        msgpack.packb({**doc, "slo_feasible": 1}),
        msgpack.packb({k: v for k, v in doc.items() if k != "consumer"}),
    ):
        assert StageState.decode(bad) is None
    older = {k: v for k, v in doc.items() if k not in ("rate", "backlog", "hop_s")}  # a writer without them
    assert StageState.decode(msgpack.packb(older)) == replace(s, rate=0.0, backlog=0, hop_s=None)


async def _board(ns: str, *states: StageState) -> StageBoard:
    settings = load_settings(broker={"url": f"memory://{ns}"}, streams={"prefix": ns})
    broker = MemoryBroker(settings.broker.url)
    await broker.publish(topology.state_stream(settings), [s.encode() for s in states])
    board = StageBoard(broker, settings)
    await board.refresh()
    return board


async def test_ready_needs_every_stage_ready_and_beating(ns: str) -> None:
    board = await _board(
        ns,
        state(DECODE),
        state(DETECTOR, kind=STARTING),
        state(CLASSIFIER, seq=1),
        state(CLASSIFIER, seq=2, kind=STOPPING),  # the latest word of a consumer is what counts
    )
    assert board.ready() == {DECODE: True, DETECTOR: False, CLASSIFIER: False}
    assert board.states() == {DECODE: READY, DETECTOR: STARTING, CLASSIFIER: STOPPING}
    later = time.monotonic() + MIN_STALE_S + 0.1  # nobody beat since
    assert board.ready(later) == {DECODE: False, DETECTOR: False, CLASSIFIER: False}
    assert board.states(later)[DECODE] == "missing"


async def test_a_leftover_of_a_process_long_gone_is_not_alive(ns: str) -> None:
    old = replace(state(DECODE), at_ns=time.time_ns() - 3600 * 10**9)
    board = await _board(ns, old)
    assert board.ready()[DECODE] is False


async def test_figures_come_from_the_least_loaded_ready_consumer(ns: str) -> None:
    board = await _board(
        ns,
        state(DETECTOR, "a", expected_s=0.3, minimum_s=0.02),
        state(DETECTOR, "b", expected_s=0.1, minimum_s=0.02),
        state(DETECTOR, "c", kind=STARTING, expected_s=0.01, minimum_s=0.01),
        state(CLASSIFIER),  # ready, no figures yet
    )
    figures = board.figures()
    assert set(figures) == {DETECTOR} and figures[DETECTOR].expected_s == pytest.approx(0.1)


async def test_a_backend_that_cannot_read_a_stream_end_leaves_the_board_unsupported(ns: str) -> None:
    class NoTail(MemoryBroker):
        async def tail(self, stream: str, count: int) -> list:  # type: ignore[type-arg]
            raise NotImplementedError

    settings = load_settings(broker={"url": f"memory://{ns}"}, streams={"prefix": ns})
    board = StageBoard(NoTail(settings.broker.url), settings)
    await board.run()  # returns at once: nothing to poll
    assert board.supported is False and board.figures() == {}
