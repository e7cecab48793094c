"""A DNN stage's instances: thread budgets per instance, routing from one queue, resizing, placement on devices."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import torch

from visionpipe.executor import LatencyModel
from visionpipe.services.runtime.cores import CPU
from visionpipe.services.runtime.dnn_stage import stage_executor
from visionpipe.services.runtime.instances import Instances, on_cpu, stage_devices
from visionpipe.settings import ExecutorSettings

SETTINGS = ExecutorSettings(max_batch=4, warmup_repeats=1, slo_ms=20.0)


class Recorder:
    """A device function that sleeps a little per batch and notes which thread ran it, with how many torch threads."""

    def __init__(self, sleep_s: float = 0.01) -> None:
        self.sleep_s = sleep_s
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls.append((threading.get_ident(), torch.get_num_threads()))
        time.sleep(self.sleep_s)
        return batch.float().sum(dim=1)


def _instances(fn: Recorder) -> Instances:
    def build(device: str, threads: int, model: LatencyModel | None) -> Any:
        return stage_executor(on_cpu(fn, threads, "toy"), (4,), SETTINGS, device, 4, model)

    return Instances("toy", build)


def test_devices_of_a_stage() -> None:
    assert stage_devices("cpu") == ["cpu"]
    assert stage_devices(" cpu , cpu ") == ["cpu"]
    if not torch.cuda.is_available():  # a GPU asked for and not there is an error, never the CPU instead
        for spec in ("cuda", "cuda:0,cuda:1", "all"):
            with pytest.raises(RuntimeError, match=r"CUDA|GPU"):
                stage_devices(spec)
        assert stage_devices("auto") == ["cpu"]
    else:
        assert stage_devices("cuda") == ["cuda:0"] and stage_devices("all")[0] == "cuda:0"
    with pytest.raises(ValueError):
        stage_devices(" , ")


def test_each_instance_runs_on_its_own_thread_budget() -> None:
    fn = Recorder(0.02)
    budgeted = [on_cpu(fn, 1, "a"), on_cpu(fn, 1, "b")]
    threads = [threading.Thread(target=lambda f=f: [f(torch.zeros(1, 4)) for _ in range(3)]) for f in budgeted]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [n for _, n in fn.calls] == [1] * 6  # set in each calling thread, whatever torch's default
    assert CPU.budget.busy_s["a"] > 0 and CPU.budget.busy_s["b"] > 0


async def test_items_spread_over_instances_and_resizing_loses_none() -> None:
    fn = Recorder()
    pool = _instances(fn)
    await pool.add("cpu", 1)
    await pool.resize(3)
    assert len(pool.live) == 3 and pool.describe() == {"instances": 3, "threads": 1, "devices": ["cpu"]}
    items = [torch.full((4,), float(i)) for i in range(40)]
    first = [asyncio.ensure_future(pool.submit(x, None)) for x in items[:20]]
    await asyncio.sleep(0)
    await pool.resize(1)  # two retire with items in hand: those finish, new items go to the one left
    rest = [asyncio.ensure_future(pool.submit(x, None)) for x in items[20:]]
    outputs = await asyncio.gather(*first, *rest)
    assert [float(o) for o in outputs] == [4.0 * i for i in range(40)]
    assert len({ident for ident, _ in fn.calls}) == 3  # every instance ran batches, each on its launcher thread
    assert len(pool.live) == 1 and pool.cost_per_item_s() > 0
    await pool.stop()
    with pytest.raises(RuntimeError, match="no instance"):
        await pool.submit(items[0], None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_instances_are_placed_on_each_gpu() -> None:
    devices = stage_devices("all")
    seen: dict[str, set[str]] = {}

    def build(device: str, threads: int, model: LatencyModel | None) -> Any:
        def fn(batch: torch.Tensor) -> torch.Tensor:
            seen.setdefault(device, set()).add(str(batch.device))
            return batch.float().sum(dim=1)

        return stage_executor(fn, (4,), SETTINGS, device, 4, model)

    pool = Instances("toy", build)
    for device in devices:
        for _ in range(2):
            await pool.add(device, 1)
    outs = await asyncio.gather(*(pool.submit(torch.ones(4, dtype=torch.uint8), None) for _ in range(32)))
    assert all(float(o) == 4.0 for o in outs)
    assert pool.describe()["devices"] == sorted(devices) and len(pool.live) == 2 * len(devices)
    assert all(seen.get(d) in ({d}, None) for d in devices)  # each instance's batches on its own GPU
    await pool.stop()
