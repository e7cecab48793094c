"""How the stages of one process share its CPU cores: a budget of running threads, and instances planned per stage.

A stage on the CPU runs *instances* (Triton's instance groups, OpenVINO's throughput streams): executors of
their own, each with a budget of threads and its own batches. One thread per instance is the default, because
a model's work does not split evenly over threads (a detector that takes 1.0 core-s on one thread takes ~1.2
on two), while whole batches side by side waste nothing. How many instances a stage runs follows its work per
image: from the single-thread costs its warm-up measured (and, for the classifier, the crops per image seen so
far), each stage gets ``cores × its work ÷ all the work`` threads, rounded up so that it can reach its share,
plus one so that it can use a core another stage leaves idle (the end of a burst, a change in the fan-out).
Rounding up means the instances' threads add up to more than the cores; the :class:`CoreBudget` keeps what
*runs* at the cores: a batch (or a decode) starts only when its threads are free, so no core is ever asked for
two threads at once and none stays idle while a batch waits. The plan is made again when a stage's work per
image moves by more than a fifth.

A service that runs one stage (``visionpipe serve detector``) plans with that stage alone: every core.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# A stage's work per image must move by this fraction before the instances are planned again.
REPLAN_CHANGE = 0.2
# cgroup v2's CPU quota of this container ("max 100000" when unlimited).
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a container's CPU quota where one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


class CoreBudget:
    """The process's cores as slots: work holds one slot per thread it runs while it runs.

    ``busy_s`` adds up, per stage, thread-seconds of work done holding slots: a stage's share of the cores.
    """

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.busy_s: dict[str, float] = {}
        self._free = cores
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def held(self, threads: int, stage: str) -> Iterator[None]:
        """Run the block once ``threads`` slots are free, holding them (a budget over the cores gets all of them)."""
        n = max(1, min(threads, self.cores))
        with self._cond:
            while self._free < n:
                self._cond.wait()
            self._free -= n
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            with self._cond:
                self._free += n
                self.busy_s[stage] = self.busy_s.get(stage, 0.0) + spent * n
                self._cond.notify_all()


@dataclass
class Demand:
    """What a stage asks of the cores: its work per image and how it runs; ``apply`` is told its instances."""

    stage: str
    work_s: float  # single-thread core-seconds per image (0: not known yet)
    threads: int  # per instance
    fixed: int  # instances set by hand; 0: planned
    apply: Callable[[int], None] | None = None
    planned_work_s: float = 0.0  # the work the last plan was made with


def plan(demands: list[Demand], cores: int) -> dict[str, int]:
    """Instances per stage: each stage's share of the cores, rounded up, plus one, within what the cores allow."""
    total = sum(d.work_s for d in demands)
    out: dict[str, int] = {}
    for d in demands:
        most = max(1, cores // d.threads)
        if d.fixed:
            out[d.stage] = d.fixed
        elif total <= 0 or d.work_s <= 0:
            out[d.stage] = most
        else:
            share = cores * d.work_s / total / d.threads
            out[d.stage] = min(most, math.ceil(share - 1e-9) + 1)
    return out


class Cores:
    """The process's budget and the stages that share it; one per process (:data:`CPU`)."""

    def __init__(self, cores: int | None = None) -> None:
        self.budget = CoreBudget(cores or cpu_cores())
        self.demands: dict[str, Demand] = {}
        self.plans: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def cores(self) -> int:
        return self.budget.cores

    def join(self, demand: Demand) -> None:
        """A stage starts sharing the cores; every stage's instances are planned again."""
        with self._lock:
            self.demands[demand.stage] = demand
        self._replan()

    def leave(self, stage: str) -> None:
        with self._lock:
            self.demands.pop(stage, None)
            self.plans.pop(stage, None)

    def report(self, stage: str, work_s: float) -> None:
        """A stage's work per image now; the instances are planned again when it moved by ``REPLAN_CHANGE``."""
        with self._lock:
            demand = self.demands.get(stage)
            if demand is None:
                self.demands[stage] = demand = Demand(stage, 0.0, 1, 1)  # work without instances (decode)
            demand.work_s = work_s
            before = demand.planned_work_s
            if before > 0 and abs(work_s - before) <= REPLAN_CHANGE * before:
                return
        self._replan()

    def _replan(self) -> None:
        with self._lock:
            demands = list(self.demands.values())
            plans = plan(demands, self.cores)
            for d in demands:
                d.planned_work_s = d.work_s
            changed = {s: n for s, n in plans.items() if self.plans.get(s) != n}
            self.plans.update(plans)
        for d in demands:
            if d.stage in changed and d.apply is not None:
                log.info("%s: %d instances of %d threads on %d cores", d.stage, changed[d.stage], d.threads, self.cores)
                d.apply(changed[d.stage])


CPU = Cores()
