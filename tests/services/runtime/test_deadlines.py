"""A DNN stage with deadlines, on the in-process broker and a simulated device: budgets, early answers, heartbeats.

The stage sits in the detector's slot and runs a :class:`SimDevice` whose batch takes 0.3 s, so what happens
while the device is busy can be seen on the wall clock without a model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tests.services.runtime.helpers import settings_for
from visionpipe import topology
from visionpipe.broker import MemoryBroker
from visionpipe.budget import StageFigures
from visionpipe.collector import Collector
from visionpipe.envelope import Envelope
from visionpipe.executor import BatchExecutor, CostModel, LatencyModel, Line, PhaseCost, SimDevice, make_policy
from visionpipe.hops import Expiry
from visionpipe.ingress import Frame, ensure_pipeline_streams, frame_envelope
from visionpipe.metrics import Metrics
from visionpipe.services.models.loading import LoadedModel
from visionpipe.services.runtime.dnn_stage import DnnStage
from visionpipe.services.runtime.worker import Worker
from visionpipe.settings import Settings
from visionpipe.stage_state import READY, StageBoard, StageState
from visionpipe.topology import CLASSIFIER, DETECTOR

BATCH_S = 0.3
SLOW = CostModel(
    "slow",
    upload=PhaseCost(0.0),
    upload_pageable=PhaseCost(0.0),
    compute=PhaseCost(0.0, BATCH_S * 1e3),
    download=PhaseCost(0.0),
)


class SlowStage(DnnStage[None]):
    """A detector whose batch takes 0.3 s on a simulated device; it counts the items it computed."""

    kind = "detection"
    name = DETECTOR

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.computed: list[int] = []

    @property
    def model_spec(self) -> tuple[str, str]:
        return "slow", "random"

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (1,)

    def build_fn(self, model: LoadedModel, device: str) -> Callable[[torch.Tensor], Any]:
        raise NotImplementedError

    async def start(self) -> None:
        await self.instances.add("sim", 1, LatencyModel.from_lines({"compute": Line(0.0, BATCH_S)}))

    def _build(self, device: str, threads: int, model: LatencyModel | None) -> BatchExecutor:
        cfg = self.settings.executor
        return BatchExecutor(SimDevice(SLOW, max_batch=4), make_policy(cfg), cfg, model=model)

    def _on_batch(self, size: int, timings: dict[str, float]) -> None:
        self.computed.append(size)
        super()._on_batch(size, timings)

    def inputs(self, env: Envelope) -> tuple[None, Sequence[np.ndarray]]:
        return None, [np.zeros(1, np.uint8)]

    def output(self, env: Envelope, hop: None, results: list[Any]) -> Envelope:
        return env.child(done=True)


def _settings(ns: str) -> Settings:
    s = settings_for(ns)
    return s.model_copy(
        update={
            "executor": s.executor.model_copy(update={"policy": "timeout", "slo_ms": 1000.0}),
            # Nothing here is dead: a delivery worked on for the whole batch must not be reclaimed as a suspect.
            "broker": s.broker.model_copy(update={"reclaim_idle_s": 30.0}),
        }
    )


async def test_out_of_time_requests_are_answered_on_the_results_stream_while_the_device_is_busy(ns: str) -> None:
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    collector = await Collector(broker, settings, "test").open()
    crops = await Collector(broker, settings, "tap", stream="crops").open()  # the stage's outputs
    stage = SlowStage(settings, Metrics())
    worker = Worker(stage, broker, settings, Metrics(), per_consume=4)
    running = asyncio.create_task(worker.run())
    try:
        while not worker.started:
            await asyncio.sleep(0.01)
        tensors = topology.input_stream(DETECTOR, settings)

        def env(rid: str, deadline_in_s: float | None) -> bytes:
            e = frame_envelope(Frame(b"x", rid))
            e.deadline_ns = None if deadline_in_s is None else time.time_ns() + int(deadline_in_s * 1e9)
            return e.encode()

        await broker.publish(tensors, [env("busy", None)])
        await asyncio.sleep(0.05)  # on the device until ~0.35 s
        t0 = time.monotonic()
        await broker.publish(tensors, [env("queued", 0.4), env("late", -0.01), env("fine", 5.0)])
        answers: dict[str, tuple[float, Expiry | None]] = {}
        while len(answers) < 4 and time.monotonic() - t0 < 5:
            batch = await collector.poll(0.05)
            for e in (await crops.poll(0.0)).results:
                answers[e.request_id] = (time.monotonic() - t0, None)
            for e, expiry in batch.expired:
                answers[e.request_id] = (time.monotonic() - t0, expiry)
        assert set(answers) == {"busy", "queued", "late", "fine"}
        queued_at, queued = answers["queued"]
        assert queued is not None and queued.stage == DETECTOR and queued.why == "queue"
        # At best after the running batch and one of its own (~0.55 s from now) against 0.4 s: answered at once.
        assert queued_at < 0.2 and 0.1 < queued.late_ms < 400
        late = answers["late"][1]
        assert late is not None and late.why == "passed"
        assert answers["fine"][1] is None and answers["busy"][1] is None
        assert sum(stage.computed) == 2, "only the two that could make it were computed"
        # The heartbeat carries the stage's state and what it expects, readable by any process on the broker.
        board = StageBoard(broker, settings)
        await board.refresh()
        assert board.ready()[DETECTOR] and board.figures()[DETECTOR].minimum_s >= BATCH_S
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    board = StageBoard(broker, settings)
    await board.refresh()
    assert board.states()[DETECTOR] == "stopping"


async def test_the_budget_leaves_room_for_the_stages_after_it(ns: str) -> None:
    """A classifier announcing 2 s of expected work makes the detector answer a 1 s deadline at admission."""
    settings = _settings(ns)
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    busy = StageState(CLASSIFIER, "other", READY, 1, time.time_ns(), 0.05, expected_s=2.0, minimum_s=0.01)
    collector = await Collector(broker, settings, "test").open()
    worker = Worker(SlowStage(settings, Metrics()), broker, settings, Metrics(), per_consume=4)
    running = asyncio.create_task(worker.run())
    try:
        while not worker.presence.board.figures().get(CLASSIFIER):
            await broker.publish(topology.state_stream(settings), [busy.encode()])
            busy = StageState(**{**busy.__dict__, "seq": busy.seq + 1, "at_ns": time.time_ns()})
            await asyncio.sleep(0.05)
        assert worker.presence.board.figures()[CLASSIFIER] == StageFigures(2.0, 0.01, 0.0, 0.0)
        e = frame_envelope(Frame(b"x", "tight"))
        e.deadline_ns = time.time_ns() + 1_000_000_000
        await broker.publish(topology.input_stream(DETECTOR, settings), [e.encode()])
        expired = []
        t0 = time.monotonic()
        while not expired and time.monotonic() - t0 < 5:
            expired = (await collector.poll(0.05)).expired
        ((_, expiry),) = expired
        assert expiry.why == "budget" and expiry.stage == DETECTOR and expiry.late_ms > 900
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
