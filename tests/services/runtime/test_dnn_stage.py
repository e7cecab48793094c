"""DNN stages on the CPU: they take turns with every core, or run side by side with a thread budget each."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import torch

from visionpipe.services.runtime.dnn_stage import on_cpu

Span = tuple[str, float, float]


def _recording(log: list[Span], name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(batch: torch.Tensor) -> torch.Tensor:
        start = time.monotonic()
        time.sleep(0.05)
        log.append((name, start, time.monotonic()))
        return batch

    return fn


def _overlaps(log: list[Span]) -> bool:
    spans = sorted(log, key=lambda s: s[1])
    return any(b[1] < a[2] for a, b in itertools.pairwise(spans))


def _run_side_by_side(fns: list[Callable[[torch.Tensor], object]]) -> None:
    threads = [threading.Thread(target=lambda f=f: [f(torch.zeros(1)) for _ in range(3)]) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_stages_of_one_process_take_turns_on_the_cpu() -> None:
    log: list[Span] = []
    _run_side_by_side([on_cpu(_recording(log, "detector"), 0), on_cpu(_recording(log, "classifier"), 0)])
    assert len(log) == 6 and not _overlaps(log)


def test_a_thread_budget_runs_side_by_side_with_that_many_threads() -> None:
    log: list[Span] = []
    seen: list[int] = []

    def counting(batch: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return _recording(log, "x")(batch)

    _run_side_by_side([on_cpu(counting, 1), on_cpu(counting, 1)])
    assert seen == [1] * 6 and _overlaps(log)  # the budget is per calling thread, and nothing waits


def test_the_request_deadline_reaches_the_executor_only_when_tighter_than_the_slo() -> None:
    """Wall clock in the envelope, the executor's monotonic clock out; a generous deadline leaves the SLO's."""
    from visionpipe.services.runtime.dnn_stage import executor_deadline

    assert executor_deadline(None, slo_ms=50) is None
    assert executor_deadline(time.time_ns() + 10_000_000_000, slo_ms=50) is None  # 10 s away: the SLO is tighter
    wall, before = time.time_ns(), time.monotonic_ns()
    got = executor_deadline(wall + 20_000_000, slo_ms=50)  # 20 ms away
    after = time.monotonic_ns()
    assert got is not None and before + 10_000_000 < got <= after + 20_000_000
    late = executor_deadline(time.time_ns() - 5_000_000, slo_ms=50)  # already 5 ms past
    assert late is not None and late < time.monotonic_ns()
