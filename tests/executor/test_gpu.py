"""On a GPU: the two-stream mechanics really overlap, measured with CUDA events. Skipped without CUDA."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from tests.executor.fns import logits_fn
from visionpipe.executor import BatchExecutor, TorchDevice, make_policy
from visionpipe.settings import ExecutorSettings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# Large enough that upload and compute each take milliseconds, so overlap is measurable above launch jitter.
ITEM = (3, 512, 512)
BATCH = 32


def _heavy(x: torch.Tensor) -> torch.Tensor:
    y = x.float()
    for _ in range(20):
        y = torch.tanh(y * 1.0001)
    return y.mean(dim=(1, 2, 3))


def test_upload_of_next_batch_overlaps_current_compute() -> None:
    device = TorchDevice(_heavy, ITEM, torch.float32, BATCH, device="cuda", overlap=True)
    item = np.ones(ITEM, np.float32)
    device.run([item] * BATCH)  # warm-up
    first = device.launch([item] * BATCH)
    second = device.launch([item] * BATCH)
    device.collect(first)
    device.collect(second)
    up0_2, up1_2 = second.events[0], second.events[1]
    comp0_1, comp1_1 = first.events[2], first.events[3]
    # second's upload starts before first's compute ends: the copy engine runs beside the kernels
    assert comp0_1.elapsed_time(up0_2) < comp0_1.elapsed_time(comp1_1)
    assert up1_2.elapsed_time(comp1_1) > -1.0


def test_overlapped_pipeline_beats_serial_throughput() -> None:
    item = np.ones(ITEM, np.float32)
    rates = {}
    for overlap in (True, False):
        device = TorchDevice(_heavy, ITEM, torch.float32, BATCH, device="cuda", overlap=overlap)
        device.run([item] * BATCH)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        handles = [device.launch([item] * BATCH) for _ in range(10)]
        for h in handles:
            device.collect(h)
        end.record()
        end.synchronize()
        rates[overlap] = 10 * BATCH / start.elapsed_time(end)
    assert rates[True] > 1.1 * rates[False]


async def test_resnet_fp16_through_executor_on_cuda() -> None:
    fn = logits_fn("resnet18", "cuda", torch.float16, channels_last=True)
    settings = ExecutorSettings(slo_ms=100, max_batch=16)
    executor = BatchExecutor(
        TorchDevice(fn, (3, 224, 224), max_batch=16, device="cuda"), make_policy(settings), settings
    )
    await executor.start()
    outs = await asyncio.gather(*(executor.submit(np.zeros((3, 224, 224), np.uint8)) for _ in range(40)))
    await executor.stop()
    assert all(o.device.type == "cpu" and o.shape == (1000,) for o in outs)


def test_cuda_graph_fn_matches_eager() -> None:
    from visionpipe.executor.cuda_graphs import CudaGraphFn

    eager = logits_fn("resnet18", "cuda")
    graphed = CudaGraphFn(eager, sizes=(1, 4))
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, device="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(graphed(x), eager(x), rtol=1e-3, atol=1e-3)
        assert graphed(x[:1]).shape == (1, 1000)
