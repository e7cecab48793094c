"""A DNN stage's instances: executors of one model, each on a device with its own threads and batches.

Every instance is a :class:`~visionpipe.executor.BatchExecutor` of its own (its own queue, batches, latency
model and host threads). The stage's one input — what its worker consumes — feeds them all: each item goes
to the instance with the fewest items waiting or running, so an instance that is behind gets no more until
the others are as far behind. On a GPU an instance is placed on a device (``devices``: ``cuda:0,cuda:1`` or
``all``, ``instances`` per device); on the CPU the instances share the process's cores through its
:class:`~visionpipe.services.runtime.cores.CoreBudget`, each batch running on its instance's thread budget
(see ``cores.py`` for how many instances a stage runs, and why one thread each).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from visionpipe.executor import BatchExecutor, LatencyModel
from visionpipe.executor.expectation import Expectation
from visionpipe.executor.latency import PHASES
from visionpipe.executor.scheduler import Batch
from visionpipe.executor.torch_device import resolve_device
from visionpipe.services.runtime.cores import CPU

log = logging.getLogger(__name__)

# Builds an instance's executor: (device, threads, latency model to start from or None to warm up).
Build = Callable[[str, int, LatencyModel | None], BatchExecutor]


def stage_devices(spec: str) -> list[str]:
    """The devices a stage's instances go on: ``cpu``, ``cuda``/``auto`` (the first GPU), ``cuda:0,cuda:1``, ``all``.

    ``cuda`` is ``cuda:0``, as it always meant; a GPU that is not there is an error, never a fallback.
    """
    spec = spec.strip()
    if spec == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RuntimeError("devices 'all' was asked for but torch sees no CUDA device")
        return [f"cuda:{i}" for i in range(count)]
    devices = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        device = resolve_device(part)
        if device == "cuda":
            device = "cuda:0"
        if device.startswith("cuda:"):
            index = int(device.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise RuntimeError(f"device {device} was asked for; torch sees {torch.cuda.device_count()} GPUs")
        devices.append(device)
    if not devices:
        raise ValueError(f"no device in {spec!r}")
    return list(dict.fromkeys(devices))


def on_cpu(fn: Callable[[torch.Tensor], Any], threads: int, stage: str) -> Callable[[torch.Tensor], Any]:
    """``fn`` as one CPU instance runs it: on ``threads`` torch threads, holding that many of the process's cores.

    torch's thread count belongs to the calling thread (OpenMP's and MKL's are per thread), and every instance
    calls from a launcher thread of its own, so it is set once in that thread. Setting it again would rebuild
    torch's own thread pool each time.
    """
    local = threading.local()

    def run(batch: torch.Tensor) -> Any:
        if getattr(local, "threads", None) != threads:
            torch.set_num_threads(threads)
            local.threads = threads
        with CPU.budget.held(threads, stage):
            return fn(batch)

    return run


class OnDevice:
    """A device function (and its graph capture) run with its GPU current: the executor's threads start on the first.

    Inside the executor's stream contexts the stream's device is current anyway; the capture of CUDA graphs at
    warm-up, and the serial path, run outside them.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], device: str) -> None:
        self.fn, self.device = fn, torch.device(device)
        capture = getattr(fn, "capture", None)
        if capture is not None:

            def on_device_capture(like: torch.Tensor) -> None:
                with torch.cuda.device(self.device):
                    capture(like)

            self.capture = on_device_capture

    def __call__(self, batch: torch.Tensor) -> Any:
        with torch.cuda.device(self.device):
            return self.fn(batch)


@dataclass
class Instance:
    executor: BatchExecutor
    device: str
    threads: int
    outstanding: int = 0  # items submitted to it and not yet back


class Instances:
    """The instances of one stage; ``submit`` routes each item, ``resize`` adds or retires CPU instances."""

    def __init__(self, stage: str, build: Build) -> None:
        self.stage = stage
        self.build = build
        self.live: list[Instance] = []
        self.on_batch: Callable[[int, dict[str, float]], None] | None = None
        self.on_dispatch: Callable[[Batch], None] | None = None
        self._turn = itertools.count()
        self._target = 0
        self._resizing = asyncio.Lock()
        self._resizes: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopped = False

    async def add(self, device: str, threads: int, model: LatencyModel | None = None) -> Instance:
        """One more instance; it warms up (and seeds its latency model) unless it starts from ``model``."""
        if device.startswith("cuda:"):
            with torch.cuda.device(device):  # its streams and buffers on its own GPU
                executor = self.build(device, threads, model)
        else:
            executor = self.build(device, threads, model)
        executor.on_batch = self.on_batch
        executor.scheduler.on_dispatch = self.on_dispatch
        await executor.start()
        instance = Instance(executor, device, threads)
        self.live.append(instance)
        return instance

    @property
    def max_batch(self) -> int:
        return self.live[0].executor.max_batch if self.live else 1

    def cost_per_item_s(self) -> float:
        """Thread-seconds one item costs at a full batch, from the first instance's latency model."""
        if not self.live:
            return 0.0
        first, b = self.live[0], self.max_batch
        return first.executor.model.total(b) / b * first.threads

    def resize_soon(self, n: int) -> None:
        """:meth:`resize` in a task of the running loop (a plan made while the stage goes on working)."""
        task = asyncio.get_running_loop().create_task(self.resize(n))
        self._resizes.add(task)
        task.add_done_callback(self._resizes.discard)

    async def resize(self, n: int) -> None:
        """Run ``n`` CPU instances: new ones start from the first one's latency model (no second warm-up)."""
        self._target = max(1, n)
        async with self._resizing:
            while self.live and len(self.live) < self._target and not self._stopped:
                first = self.live[0]
                lines = {p: first.executor.model.line(p) for p in PHASES}
                await self.add(first.device, first.threads, LatencyModel.from_lines(lines))
            while len(self.live) > self._target:
                retired = self.live.pop()  # takes no new items; those it holds finish before it stops
                task = asyncio.create_task(retired.executor.stop())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def submit(self, item: Any, deadline_ns: int | None, expire_ns: int | None = None) -> Any:
        """The item's output, from the instance with the least in hand (ties taken in turn).

        The instance is picked and handed the item in one step, so an instance retired meanwhile is never picked.
        ``deadline_ns`` is what its batch is planned against, ``expire_ns`` when it is taken out unrun.
        """
        n = len(self.live)
        if n == 0:
            raise RuntimeError(f"{self.stage}: no instance running")
        start = next(self._turn)
        instance = min((self.live[(start + i) % n] for i in range(n)), key=lambda inst: inst.outstanding)
        instance.outstanding += 1
        try:
            return await instance.executor.submit(item, deadline_ns=deadline_ns, expire_ns=expire_ns)
        finally:
            instance.outstanding -= 1

    def observe_backlog(self, requests: int) -> None:
        """The stage's backlog, in requests, split evenly: each instance's arrival estimate sees its part."""
        for instance in self.live:
            instance.executor.observe_backlog(requests // max(1, len(self.live)))

    def expectation(self, backlog: float, items: float) -> Expectation | None:
        """What a message of ``items`` requests should expect: the backlog splits evenly across the instances,
        and the message goes to the one that would serve it soonest."""
        if not self.live:
            return None
        now, share = time.monotonic_ns(), backlog / len(self.live)
        return min(
            (i.executor.scheduler.expectation(now, share, items=items) for i in self.live), key=lambda e: e.total_s
        )

    @property
    def slo_feasible(self) -> bool:
        return all(getattr(i.executor.policy, "slo_feasible", True) for i in self.live)

    @property
    def arrival_rate(self) -> float:
        """Requests/s into the stage: the sum of what each instance sees."""
        now = time.monotonic_ns()
        return sum(i.executor.scheduler.rate.rate(now) for i in self.live)

    def describe(self) -> dict[str, Any]:
        devices = sorted({i.device for i in self.live})
        return {"instances": len(self.live), "threads": self.live[0].threads if self.live else 0, "devices": devices}

    async def stop(self) -> None:
        self._stopped = True
        await asyncio.gather(*self._resizes, return_exceptions=True)
        live, self.live = self.live, []
        await asyncio.gather(*(i.executor.stop() for i in live), *self._retiring, return_exceptions=True)
