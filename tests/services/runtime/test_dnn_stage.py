"""The DNN stage template: on the CPU, instances planned from warm-up costs and re-planned as the fan-out moves;
the request's deadline handed to the executor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from visionpipe.envelope import Envelope
from visionpipe.services.models.loading import LoadedModel
from visionpipe.services.runtime import dnn_stage
from visionpipe.services.runtime.cores import CPU, Cores
from visionpipe.services.runtime.dnn_stage import DnnStage, executor_deadline
from visionpipe.settings import Settings, load_settings

SIDE = 8


class Toy(DnnStage[list[np.ndarray]]):
    """A stage of one crop per object: its work per image is its fan-out times its cost per item."""

    name = "classifier"
    kind = "classification"

    @property
    def model_spec(self) -> tuple[str, str]:
        return "toy", "random"

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (3, SIDE, SIDE)

    def build_fn(self, model: LoadedModel, device: str) -> Callable[[torch.Tensor], Any]:
        def fn(batch: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"mean": batch.float().mean(dim=(1, 2, 3))}

        return fn

    def requests_in(self, env: Envelope) -> int:
        return len(env.arrays["crops"])

    def inputs(self, env: Envelope) -> tuple[list[np.ndarray], Sequence[np.ndarray]]:
        crops = list(env.arrays["crops"])
        return crops, crops

    def output(self, env: Envelope, hop: list[np.ndarray], results: list[Any]) -> Envelope:
        return env.child(means=[float(r["mean"]) for r in results])


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cores]:
    """A process-wide core plan of its own (4 cores), so the test's stages share it with nothing else."""
    mine = Cores(4)
    monkeypatch.setattr(dnn_stage, "CPU", mine)
    monkeypatch.setattr(
        dnn_stage,
        "load_model",
        lambda *a: LoadedModel(torch.nn.Identity(), "random", None, arch="toy"),
    )
    yield mine


def _settings(**classifier: Any) -> Settings:
    return load_settings(
        service={"device": "cpu"},
        executor={"max_batch": 4, "warmup_repeats": 1, "slo_ms": 20.0},
        classifier=classifier,
    )


def _message(crops: int, value: int = 7) -> Envelope:
    return Envelope("r", arrays={"crops": np.full((crops, 3, SIDE, SIDE), value, dtype=np.uint8)})


async def test_a_stage_alone_takes_every_core_one_thread_each(cores: Cores) -> None:
    stage = Toy(_settings())
    await stage.start()
    await _settle_plans(stage)
    assert stage.instances.describe() == {"instances": 4, "threads": 1, "devices": ["cpu"]}
    assert stage.prefetch_requests == 2 * 4 * 4  # two device batches per instance
    (out,) = await _work(stage, [_message(3)])
    assert isinstance(out, Envelope) and out.payload["means"] == [7.0] * 3
    await stage.stop()
    assert "classifier" not in cores.plans


async def test_instances_and_threads_set_by_hand(cores: Cores) -> None:
    stage = Toy(_settings(instances=1))
    await stage.start()
    await _settle_plans(stage)
    assert stage.instances.describe()["instances"] == 1
    assert stage.instances.describe()["threads"] == 4  # one instance: the cores are its threads
    await stage.stop()


async def test_the_instances_follow_the_fan_out(cores: Cores) -> None:
    """Beside a heavy stage, the toy gets one core's share; once every image brings twenty crops, most of them."""
    heavy: list[int] = []
    cores.join(dnn_stage.Demand("detector", 1.0, 1, 0, apply=heavy.append))
    stage = Toy(_settings())
    await stage.start()
    await _settle_plans(stage)
    per_item = stage.instances.cost_per_item_s()
    cores.report("detector", per_item * 4)  # the detector costs four crops' worth of work per image
    await _settle_plans(stage)
    before = len(stage.instances.live)
    for _ in range(80):  # the fan-out estimate follows the messages seen
        await _work(stage, [_message(20, 1)])
    await _settle_plans(stage)
    assert len(stage.instances.live) > before and cores.plans["detector"] < heavy[0]
    await stage.stop()


async def _work(stage: Toy, envs: list[Envelope]) -> list[Any]:
    return list(await asyncio.gather(*stage.items(envs)))


async def _settle_plans(stage: Toy) -> None:
    """Let the resizes a plan asked for run (they are tasks of the loop)."""
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not stage.instances._resizes:
            return


def test_the_process_plan_is_shared() -> None:
    assert isinstance(CPU, Cores) and CPU.cores >= 1


def test_the_request_deadline_reaches_the_executor_only_when_tighter_than_the_slo() -> None:
    """Wall clock in the envelope, the executor's monotonic clock out; a generous deadline leaves the SLO's."""
    assert executor_deadline(None, slo_ms=50) is None
    assert executor_deadline(time.time_ns() + 10_000_000_000, slo_ms=50) is None  # 10 s away: the SLO is tighter
    wall, before = time.time_ns(), time.monotonic_ns()
    got = executor_deadline(wall + 20_000_000, slo_ms=50)  # 20 ms away
    after = time.monotonic_ns()
    assert got is not None and before + 10_000_000 < got <= after + 20_000_000
    late = executor_deadline(time.time_ns() - 5_000_000, slo_ms=50)  # already 5 ms past
    assert late is not None and late < time.monotonic_ns()
