"""TorchDevice on the CPU with a small torchvision model: the path every stage takes without a GPU."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from tests.executor.fns import logits_fn
from visionpipe.executor import BatchExecutor, TorchDevice, make_policy
from visionpipe.executor.host_io import split_outputs
from visionpipe.settings import ExecutorSettings

SIZE = 64  # small inputs keep mobilenet_v3_small at a few ms per image on 2 cores


async def test_mobilenet_through_the_executor_matches_direct_forward() -> None:
    torch.manual_seed(0)
    fn = logits_fn("mobilenet_v3_small", "cpu")
    settings = ExecutorSettings(policy="adaptive", slo_ms=2000, max_batch=4, warmup_repeats=1)
    device = TorchDevice(fn, item_shape=(3, SIZE, SIZE), max_batch=4, device="cpu")
    executor = BatchExecutor(device, make_policy(settings), settings)
    timings: list[dict[str, float]] = []
    executor.on_batch = lambda size, t: timings.append(t) or None
    await executor.start()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8) for _ in range(6)]
    outs = await asyncio.gather(*(executor.submit(im) for im in images))
    await executor.stop()
    with torch.inference_mode():
        direct = fn(torch.from_numpy(np.stack(images)))
    assert all(o.shape == (1000,) for o in outs)
    torch.testing.assert_close(torch.stack(outs), direct, rtol=1e-4, atol=1e-4)
    assert timings and {"queue", "stage", "upload", "compute", "download"} <= set(timings[0])
    assert executor.model.compute(4) > 0  # warm-up seeded the model from two batch sizes


def test_fn_may_return_one_output_per_item() -> None:
    def per_item(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{"sum": t.float().sum(), "max": t.max()} for t in x]

    device = TorchDevice(per_item, item_shape=(4,), max_batch=3, device="cpu")
    outs, timings = device.run([np.arange(4, dtype=np.uint8)] * 3)
    assert [o["sum"].item() for o in outs] == [6.0, 6.0, 6.0]
    assert set(timings) == {"stage", "upload", "compute", "download", "launch"}


def test_wrong_output_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="outputs"):
        split_outputs([torch.zeros(1)], 2)


def test_batch_larger_than_max_is_refused() -> None:
    device = TorchDevice(lambda x: x, item_shape=(1,), max_batch=2, device="cpu")
    with pytest.raises(ValueError, match=r"1\.\.2"):
        device.stage([np.zeros(1, np.uint8)] * 3)


def test_overlap_is_off_without_cuda() -> None:
    device = TorchDevice(lambda x: x, item_shape=(1,), max_batch=2, device="cpu", overlap=True)
    assert device.overlap is False


def test_read_only_items_are_accepted_without_warnings() -> None:
    item = np.frombuffer(bytes(range(4)), dtype=np.uint8)  # like a view of a received message
    assert not item.flags.writeable
    device = TorchDevice(lambda x: x.float(), item_shape=(4,), max_batch=2, device="cpu")
    outs, _ = device.run([item, item])
    assert outs[1].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_dict_of_batched_tensors_is_handed_out_row_by_row() -> None:
    """The stages' contract: batched tensors, padded with a per-item count; item i gets {k: v[i]}."""

    def padded(x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        return {"boxes": x.float().view(b, 1, 4).expand(b, 3, 4), "count": x[:, 0].long()}

    device = TorchDevice(padded, item_shape=(4,), max_batch=4, device="cpu")
    items = [np.full(4, i, dtype=np.uint8) for i in range(3)]
    outs, _ = device.run(items)
    assert [o["count"].item() for o in outs] == [0, 1, 2]
    assert all(o["boxes"].shape == (3, 4) and (o["boxes"] == i).all() for i, o in enumerate(outs))


def test_a_dict_that_is_not_batched_is_an_error() -> None:
    with pytest.raises(ValueError, match="batched"):
        split_outputs({"scores": torch.zeros(3), "total": torch.zeros(())}, 3)


@pytest.mark.parametrize("pinned", [True, False])
def test_serial_mechanics_on_the_cpu_are_pageable(pinned: bool) -> None:
    device = TorchDevice(lambda x: x, item_shape=(2,), max_batch=2, device="cpu", overlap=False, pinned=pinned)
    assert device.mechanics == "serial-pageable"  # no pinned memory without CUDA


def test_a_large_batch_is_staged_in_parallel_rows_intact() -> None:
    from visionpipe.executor.host_io import STAGE_PARALLEL_BYTES, fill

    shape = (256, 256, 3)  # 8 items of 196 KB: past the parallel threshold together
    n = STAGE_PARALLEL_BYTES // (256 * 256 * 3) * 2 + 3
    rng = np.random.default_rng(0)
    items: list[object] = [np.frombuffer(rng.bytes(256 * 256 * 3), np.uint8).reshape(shape) for _ in range(n)]
    items[1] = torch.from_numpy(np.array(items[1]))  # a CPU tensor among read-only views
    buffer = torch.empty((n, *shape), dtype=torch.uint8)
    fill(buffer, items, shape)
    assert all(np.array_equal(buffer[i].numpy(), np.asarray(items[i])) for i in range(n))
    items[-1] = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        fill(buffer, items, shape)


def test_a_batch_is_padded_up_to_its_bucket_and_only_its_rows_come_back() -> None:
    seen: list[int] = []

    def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(x.shape[0])
        return {"sum": x.float().sum(dim=1)}

    device = TorchDevice(fn, item_shape=(2,), max_batch=8, device="cpu", buckets=(2, 4, 8))
    outs, _ = device.run([np.full(2, i, np.uint8) for i in range(3)])
    assert seen == [4] and [o["sum"].item() for o in outs] == [0.0, 2.0, 4.0]
    assert device.padded(5) == 8 and device.padded(1) == 2


def test_warmup_runs_every_bucket_once_before_timing() -> None:
    seen: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x.float()

    device = TorchDevice(fn, item_shape=(2,), max_batch=8, device="cpu", buckets=(1, 2, 4, 8))
    samples = device.warmup([1, 8], repeats=2)
    assert seen == [1, 2, 4, 8, 1, 1, 8, 8]
    assert [b for b, _ in samples["compute"]] == [1, 1, 8, 8] and "launch" in samples


def test_on_the_cpu_batches_are_not_padded_by_default() -> None:
    device = TorchDevice(lambda x: x, item_shape=(1,), max_batch=8, device="cpu")
    assert device.buckets == () and device.padded(3) == 3
