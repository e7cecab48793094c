"""CUDA graphs' host-side logic, on the CPU: buckets, the eager fallback, one capture at a time per process."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
import torch

from visionpipe.executor import cuda_graphs
from visionpipe.executor.cuda_graphs import CudaGraphFn, buckets, prepare_fn
from visionpipe.settings import ExecutorSettings


def test_buckets_are_powers_of_two_and_the_maximum_unless_given() -> None:
    assert buckets(24) == (1, 2, 4, 8, 16, 24)
    assert buckets(32, [3, 8, 64]) == (3, 8, 32)


def test_on_the_cpu_the_function_runs_eager_and_is_not_wrapped() -> None:
    graphed = CudaGraphFn(lambda x: x * 2, (1, 4))
    assert torch.equal(graphed(torch.ones(3)), torch.full((3,), 2.0))  # nothing captured: eager
    fn = prepare_fn(lambda x: x, ExecutorSettings(cuda_graphs=True), "cpu", 8)
    assert not isinstance(fn, CudaGraphFn)


def test_captures_from_two_threads_run_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector and the classifier warm up at once in `visionpipe run`: their captures must not interleave."""
    spans: list[tuple[float, float]] = []

    def fake_capture(self: CudaGraphFn, size: int, like: torch.Tensor, pool: Any) -> Any:
        assert cuda_graphs.CAPTURE_LOCK.locked()
        start = time.monotonic()
        time.sleep(0.05)
        spans.append((start, time.monotonic()))
        return None, like, like

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(CudaGraphFn, "_capture", fake_capture)
    fns = [CudaGraphFn(lambda x: x, (1, 2)) for _ in range(2)]
    threads = [threading.Thread(target=f.capture, args=(torch.zeros(2, 3),)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 4 and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    # a thread captures all its buckets under one hold of the lock: the first two spans are one function's
    assert fns[0].captured == (1, 2) and fns[1].captured == (1, 2)


def test_captures_are_thread_local() -> None:
    """A cudaMalloc or a sync on another thread (the other stage warming up) must not invalidate a capture."""
    assert cuda_graphs.CAPTURE_ERROR_MODE == "thread_local"
