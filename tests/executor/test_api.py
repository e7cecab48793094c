"""The public API the stages code against: BatchExecutor over TorchDevice (CPU) and SimDevice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from visionpipe.executor import BatchExecutor, LatencyModel, SimDevice, TorchDevice, cost_model, make_policy
from visionpipe.settings import ExecutorSettings


def _double(x: torch.Tensor) -> torch.Tensor:
    return x.float() * 2


@pytest.mark.parametrize("policy", ["adaptive", "slack", "fixed", "timeout", "aimd"])
async def test_torch_cpu_outputs_match_inputs(policy: str) -> None:
    settings = ExecutorSettings(policy=policy, slo_ms=50, max_batch=8, fixed_batch=4, warmup_repeats=1)
    device = TorchDevice(_double, item_shape=(2, 3), item_dtype=torch.uint8, max_batch=8, device="cpu")
    sizes: list[int] = []
    executor = BatchExecutor(device, make_policy(settings), settings)
    executor.on_batch = lambda size, timings: sizes.append(size) or None
    await executor.start()
    items = [np.full((2, 3), i, dtype=np.uint8) for i in range(20)]
    outs = await asyncio.gather(*(executor.submit(it) for it in items))
    await executor.stop()
    for i, out in enumerate(outs):
        assert isinstance(out, torch.Tensor) and out.device.type == "cpu"
        assert torch.equal(out, torch.full((2, 3), 2.0 * i))
    assert sum(sizes) == 20 and max(sizes) <= 8


async def test_batch_exception_reaches_every_request_and_loop_goes_on() -> None:
    calls = 0

    def flaky(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom")
        return x.float()

    settings = ExecutorSettings(policy="fixed", fixed_batch=3, slo_ms=1000, max_batch=4)
    device = TorchDevice(flaky, item_shape=(1,), max_batch=4, device="cpu")
    executor = BatchExecutor(device, make_policy(settings), settings)
    executor.model.seed({"compute": [(1, 1e-4), (4, 2e-4)]})  # no warm-up: the first call must be the failing one
    executor._seeded = True
    await executor.start()
    first = await asyncio.gather(*(executor.submit(np.zeros(1, np.uint8)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in first)
    second = await asyncio.gather(*(executor.submit(np.ones(1, np.uint8)) for _ in range(3)))
    assert all(torch.equal(o, torch.ones(1)) for o in second)
    await executor.stop()
    with pytest.raises(RuntimeError):
        await executor.submit(np.zeros(1, np.uint8))


async def test_wrong_item_shape_fails_its_batch_only() -> None:
    settings = ExecutorSettings(policy="timeout", max_queue_delay_ms=0, slo_ms=1000, max_batch=4, warmup_repeats=1)
    device = TorchDevice(_double, item_shape=(2,), max_batch=4, device="cpu")
    executor = BatchExecutor(device, make_policy(settings), settings)
    await executor.start()
    with pytest.raises(ValueError, match="shape"):
        await executor.submit(np.zeros(3, np.uint8))
    assert torch.equal(await executor.submit(np.ones(2, np.uint8)), torch.full((2,), 2.0))
    await executor.stop()


async def test_sim_device_on_real_clock_overlaps() -> None:
    """SimDevice as a Device: batches go through the asyncio executor and come back in order."""
    settings = ExecutorSettings(policy="adaptive", slo_ms=100, max_batch=16, warmup_repeats=1)
    device = SimDevice(cost_model("h100"), max_batch=16, overlap=True)
    executor = BatchExecutor(device, make_policy(settings), settings)
    await executor.start()
    outs = await asyncio.gather(*(executor.submit(i) for i in range(40)))
    await executor.stop()
    assert outs == list(range(40))
    assert executor.model.compute(16) == pytest.approx(5.6e-3, rel=0.2)


async def test_a_request_that_cannot_make_its_expiry_is_answered_before_the_running_batch_ends() -> None:
    """Not when the running batch ends (Triton's queue timeout): the moment the scheduler knows."""
    from visionpipe.executor import CostModel, DeadlineExceeded, LatencyModel, Line, PhaseCost

    slow = CostModel(
        "slow",
        upload=PhaseCost(0.0),
        upload_pageable=PhaseCost(0.0),
        compute=PhaseCost(0.0, 400.0),
        download=PhaseCost(0.0),
    )
    settings = ExecutorSettings(policy="timeout", max_batch=4, max_queue_delay_ms=0.0, slo_ms=1000)
    model = LatencyModel.from_lines({"compute": Line(0.0, 0.4)})
    executor = BatchExecutor(SimDevice(slow, max_batch=4), make_policy(settings), settings, model=model)
    await executor.start()
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(executor.submit(0))
    await asyncio.sleep(0.05)  # the first batch is on the device until ~0.4 s
    t0 = loop.time()
    with pytest.raises(DeadlineExceeded) as info:
        await executor.submit(1, expire_ns=time.monotonic_ns() + 200_000_000)
    # At best after the running batch (to ~0.4 s) and one of its own (0.4 s): ~0.55 s past an expiry at 0.25 s.
    assert loop.time() - t0 < 0.1 and 0.4 < info.value.late_s < 0.7
    assert await running == 0
    await executor.stop()


class _ThreadRecorder(SimDevice):
    """A SimDevice that blocks the event loop while it stages, and records where and when each step ran."""

    def __init__(self) -> None:
        super().__init__(cost_model("h100"), max_batch=4, overlap=True)
        self.steps: dict[str, tuple[str, float]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def _note(self, step: str) -> None:
        self.steps[step] = (threading.current_thread().name, time.monotonic())

    def stage(self, items: Sequence[Any]) -> Any:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(time.sleep, BLOCK_S)  # the loop is stuck from here on for BLOCK_S
        time.sleep(0.02)
        self._note("stage")
        return items

    def launch(self, items: Sequence[Any]) -> Any:
        self._note("launch")
        return super().launch(items)

    def collect(self, handle: Any) -> tuple[list[Any], dict[str, float]]:
        out = super().collect(handle)
        self._note("collect")
        return out


BLOCK_S = 0.3


async def test_a_batch_goes_stager_to_launcher_to_collector_without_the_event_loop() -> None:
    settings = ExecutorSettings(policy="timeout", max_queue_delay_ms=0, slo_ms=1000, max_batch=4)
    device = _ThreadRecorder()
    executor = BatchExecutor(device, make_policy(settings), settings, model=LatencyModel())
    await executor.start()
    device.loop = asyncio.get_running_loop()
    blocked_from = time.monotonic()
    assert await executor.submit(7) == 7
    await executor.stop()
    threads = {step: name for step, (name, _) in device.steps.items()}
    assert threads["stage"].startswith("vp-stage") and threads["launch"].startswith("vp-launch")
    assert threads["collect"].startswith("vp-collect")
    # Launched and collected while the loop thread slept: no hop through it between the device's threads.
    assert device.steps["collect"][1] - blocked_from < BLOCK_S
