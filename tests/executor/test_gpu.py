"""On a GPU: the two-stream mechanics really overlap, measured with CUDA events. Skipped without CUDA.

The stage tests build the detector's and the classifier's device functions
through the stages' own path (``Stage(settings).build_fn``) with the default
models, so when the defaults change these tests follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tests.executor.fns import logits_fn
from visionpipe.executor import BatchExecutor, TorchDevice, make_policy
from visionpipe.executor.cuda_graphs import CudaGraphFn, prepare_fn
from visionpipe.settings import ExecutorSettings, Settings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# Large enough that upload and compute each take milliseconds, so overlap is measurable above launch jitter.
ITEM = (3, 512, 512)
BATCH = 32
STAGE_BATCH = 16
# Consecutive batch pairs the overlap test looks at once the pipeline is full.
PAIRS = 6
# Elementwise passes of the synthetic model: milliseconds of compute for a batch, as long as its upload.
HEAVY_PASSES = 20
# The overlapped pipeline must deliver at least this share of the gain its own phase times predict.
OVERLAP_SHARE = 0.5


def _heavy(x: torch.Tensor) -> torch.Tensor:
    y = x.float()
    for _ in range(HEAVY_PASSES):
        y = torch.tanh(y * 1.0001)
    return y.mean(dim=(1, 2, 3))


def _stage(kind: str) -> Any:
    from visionpipe.services.classifier.stage import ClassifierStage
    from visionpipe.services.detector.stage import DetectorStage

    return (DetectorStage if kind == "detector" else ClassifierStage)(Settings())


def stage_fn(kind: str) -> tuple[Callable[[torch.Tensor], Any], tuple[int, ...]]:
    """The stage's own device function for its default model (random weights) on CUDA, and its item shape."""
    from visionpipe.services.models.loading import RANDOM, load_model

    stage = _stage(kind)
    name, _ = stage.model_spec
    fn = stage.build_fn(load_model(stage.kind, name, RANDOM), "cuda")
    return fn, stage.item_shape


def _random_items(shape: tuple[int, ...], n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("kind", ["detector", "classifier"])
def test_stage_function_never_synchronises_with_the_host(kind: str) -> None:
    fn, shape = stage_fn(kind)
    device = TorchDevice(fn, shape, max_batch=STAGE_BATCH, device="cuda", overlap=True)
    device.warmup([STAGE_BATCH], 1)  # every bucket and every slot: cuDNN, the caching allocator, output buffers
    staged = device.stage(_random_items(shape, STAGE_BATCH))
    torch.cuda.set_sync_debug_mode("error")  # any .item(), .cpu(), nonzero, blocking copy in fn raises
    try:
        handle = device.launch(staged)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    outputs, timings = device.collect(handle)
    assert len(outputs) == STAGE_BATCH and isinstance(outputs[0], dict)
    assert all(v.device.type == "cpu" for v in outputs[0].values())
    assert timings["compute"] > 0


def test_after_warm_up_every_batch_size_reuses_the_slots_pinned_output_buffers() -> None:
    """Warm-up runs every bucket and fills every slot; later batches of any size allocate no pinned memory."""
    fn, shape = stage_fn("classifier")
    device = TorchDevice(fn, shape, max_batch=STAGE_BATCH, device="cuda", overlap=True)
    device.warmup([1, STAGE_BATCH], 1)
    warm = device.output_allocations
    for n in (3, STAGE_BATCH, 1, 7, 5, 2):
        outs, _ = device.run(_random_items(shape, n))
        assert len(outs) == n and outs[0]["labels"].is_pinned()
        del outs
    assert device.output_allocations == warm


@pytest.mark.parametrize("kind", ["detector", "classifier"])
async def test_next_upload_starts_before_current_compute_ends_with_the_stage_function(kind: str) -> None:
    """Through the executor, at full load: from the CUDA events, batch n+1's upload begins while n computes."""
    fn, shape = stage_fn(kind)
    settings = ExecutorSettings(policy="timeout", max_queue_delay_ms=0.0, slo_ms=1000, max_batch=STAGE_BATCH)
    device = TorchDevice(fn, shape, max_batch=STAGE_BATCH, device="cuda", overlap=True)
    executor = BatchExecutor(device, make_policy(settings), settings)
    await executor.start()
    device.enable_event_log()
    items = _random_items(shape, STAGE_BATCH)
    await asyncio.gather(*(executor.submit(items[i % STAGE_BATCH]) for i in range(STAGE_BATCH * (PAIRS + 2))))
    await executor.stop()
    assert device.event_log is not None
    log = list(device.event_log)
    overlapped = 0
    for prev, nxt in itertools.pairwise(log):
        comp0, comp1, up0 = prev[2], prev[3], nxt[0]
        if comp0.elapsed_time(up0) < comp0.elapsed_time(comp1):
            overlapped += 1
    assert overlapped >= (len(log) - 1) // 2, f"only {overlapped} of {len(log) - 1} uploads overlapped a compute"


def test_upload_of_next_batch_overlaps_current_compute() -> None:
    device = TorchDevice(_heavy, ITEM, torch.uint8, BATCH, device="cuda", overlap=True)
    item = np.ones(ITEM, np.uint8)
    device.warmup([BATCH], 1)
    # Both staged (host copies done) before either launches, as the stager thread runs ahead of the launcher:
    # the second upload waits only for the copy engine, so what is left to see is the streams overlapping.
    staged = [device.stage([item] * BATCH) for _ in range(2)]
    first, second = (device.launch(s) for s in staged)
    device.collect(first)
    device.collect(second)
    up0_2 = second.events[0]
    comp0_1, comp1_1 = first.events[2], first.events[3]
    assert first.events[0].elapsed_time(first.events[1]) < comp0_1.elapsed_time(comp1_1), "premise: compute > upload"
    # second's upload starts before first's compute ends: the copy engine runs beside the kernels
    assert comp0_1.elapsed_time(up0_2) < comp0_1.elapsed_time(comp1_1)


def _rate(device: TorchDevice, item: np.ndarray, batches: int) -> tuple[float, dict[str, float]]:
    """Items/s through ``device`` with stage and launch alternating on this thread, and its mean phase times."""
    device.warmup([BATCH], 1)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    handles = [device.launch(device.stage([item] * BATCH)) for _ in range(batches)]
    phases = [device.collect(h)[1] for h in handles]
    end.record()
    end.synchronize()
    mean = {p: sum(t[p] for t in phases) / batches for p in phases[0]}
    return batches * BATCH / start.elapsed_time(end), mean


def test_overlapped_pipeline_beats_serial_throughput() -> None:
    """Overlap buys what its phases allow: one thread stages and launches, the GPU copies beside the kernels.

    The bar is set from the serial run's own phase times, so a host that copies memory slowly (the fill of the
    pinned buffer is host work either way) moves the bar rather than failing the test.
    """
    item = np.ones(ITEM, np.float32)  # 100 MB a batch: the host's copy and the upload weigh as much as compute
    overlapped, _ = _rate(TorchDevice(_heavy, ITEM, torch.float32, BATCH, device="cuda", overlap=True), item, 10)
    serial, t = _rate(TorchDevice(_heavy, ITEM, torch.float32, BATCH, device="cuda", overlap=False), item, 10)
    # Serially a batch costs the sum of its phases; overlapped the slowest of the host's part and each stream.
    predicted = (t["stage"] + t["upload"] + t["compute"] + t["download"]) / max(
        t["stage"] + t["launch"], t["upload"], t["compute"], t["download"]
    )
    assert predicted >= 1.2, f"premise: the phases leave overlap room to gain ({t})"
    assert overlapped / serial >= 1 + OVERLAP_SHARE * (predicted - 1), (overlapped / serial, predicted, t)


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


def test_cuda_graph_fn_matches_eager_and_pads_to_its_bucket() -> None:
    """Same batch size and no TF32 on either side: the graph replays exactly the eager function's kernels."""
    eager = logits_fn("resnet18", "cuda")
    graphed = CudaGraphFn(eager, sizes=(1, 4))
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, device="cuda")
    with torch.inference_mode(), _no_tf32():
        graphed.capture(x)
        assert graphed.captured == (1, 4)
        got = graphed(x)  # 3 rows padded up to 4 in the graph's static input
        want = eager(torch.cat((x, x[:1])))[:3]  # eager at the graph's batch size: the same algorithms
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert graphed(x[:1]).shape == (1, 1000)


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("kind", ["detector", "classifier"])
def test_stage_function_replayed_from_graphs_matches_eager(kind: str) -> None:
    """``executor.cuda_graphs`` on the stage's own function: captured at warm-up, same outputs as eager."""
    fn, shape = stage_fn(kind)
    settings = ExecutorSettings(cuda_graphs=True, graph_batches=[2, 8])
    graphed = prepare_fn(fn, settings, "cuda", 8)
    assert isinstance(graphed, CudaGraphFn)
    device = TorchDevice(graphed, shape, max_batch=8, device="cuda", overlap=True)
    device.warmup([1, 8], 1)
    assert graphed.captured == (2, 8)
    items = _random_items(shape, 5)
    got, _ = device.run(items)  # 5 pads up to 8
    want, _ = TorchDevice(fn, shape, max_batch=8, device="cuda", overlap=True).run(items)
    # Random weights score classes nearly alike, so which label wins a near-tie may differ between two kernel
    # choices; the scores (sorted) and the counts may not.
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g["scores"], w["scores"], rtol=2e-2, atol=2e-3)
        if "count" in w:
            assert g["count"] == w["count"]
