"""The template of a DNN stage: a model behind a ``BatchExecutor``, one executor request per item.

A stage says which model it loads and how its device function is built, and
two steps: :meth:`DnnStage.inputs` (the hop it reads and the items to submit:
an image, or one crop per box) and :meth:`DnnStage.output` (the envelope for
the next stage, from one device output per item). Reading the hop, submitting
with the request's deadline, the timing stamps, the child envelope, loading,
readiness, backlog hints and metrics live here once. The executor forms
batches across every message in flight and decides when a batch goes (policy,
deadlines); the stage only decides what an item is. The worker keeps
``prefetch_requests`` items in flight (``service.prefetch_batches`` device
batches' worth), so a device batch can fill to ``executor.max_batch`` however
few messages one consume brings; the broker backlog reaches the executor's
arrival estimate in requests, not messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from visionpipe.envelope import Envelope, Event
from visionpipe.executor import BatchExecutor, DeadlineExceeded, TorchDevice, make_policy
from visionpipe.executor.cuda_graphs import prepare_fn
from visionpipe.executor.expectation import Expectation
from visionpipe.executor.scheduler import Batch
from visionpipe.executor.torch_device import resolve_device
from visionpipe.hops import WHY_QUEUE, HopError
from visionpipe.metrics import Metrics
from visionpipe.services.models.loading import Kind, LoadedModel, load_model
from visionpipe.services.runtime.stage import BadInput, Expired, Outcome, Stage
from visionpipe.settings import ExecutorSettings, Settings

log = logging.getLogger(__name__)

# On a CPU a bigger batch buys almost nothing (no kernel-launch cost to spread, threads already busy) while
# warm-up times the largest batch several times, and a 32-image detector batch takes seconds on a small CPU.
CPU_MAX_BATCH = 4
# Requests per message start at one and follow the messages seen: an EWMA over about the last 20 messages.
PER_MESSAGE_WEIGHT = 0.05

H = TypeVar("H")  # the hop a stage reads: Letterboxed for the detector, Detections for the classifier


def stage_executor(
    fn: Callable[[torch.Tensor], Any],
    item_shape: tuple[int, ...],
    settings: ExecutorSettings,
    device: str,
    cpu_max_batch: int = CPU_MAX_BATCH,
) -> BatchExecutor:
    """A ``BatchExecutor`` around ``fn`` on ``device``, built the same way for every DNN stage.

    ``fn`` is compiled and graphed as the settings ask (graphs are captured in the device's warm-up).
    """
    if device == "cpu" and settings.max_batch > cpu_max_batch:
        settings = settings.model_copy(update={"max_batch": cpu_max_batch})
    torch_device = TorchDevice(
        prepare_fn(fn, settings, device, settings.max_batch),
        item_shape=item_shape,
        item_dtype=torch.uint8,
        max_batch=settings.max_batch,
        device=device,
        overlap=settings.overlap,
        pinned=settings.pinned,
    )
    return BatchExecutor(torch_device, make_policy(settings), settings)


# The DNN stages of one process take turns on the CPU (visionpipe run), each with every core; see on_cpu.
CPU_TURN = threading.Lock()


def on_cpu(fn: Callable[[torch.Tensor], Any], threads: int) -> Callable[[torch.Tensor], Any]:
    """``fn`` as it runs on the CPU: taking turns with the process's other stages, or with a budget of threads.

    ``threads`` 0: each call holds ``CPU_TURN`` and uses torch's threads (every core), as a plain
    loop would. Side by side instead, each stage's executor thread starts an OpenMP team of every
    core (the count belongs to the calling thread) and they fight over the cores; on a small CPU
    taking turns beat one thread per stage in most paired runs (benchmarks/RESULTS.md). A service
    with one DNN stage never waits for the lock.

    ``threads`` > 0: that many threads, set in whichever thread calls, and no turns: for a
    machine with cores enough to give each stage its own.
    """
    if threads > 0:

        def budgeted(batch: torch.Tensor) -> Any:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return fn(batch)

        return budgeted

    def in_turn(batch: torch.Tensor) -> Any:
        with CPU_TURN:
            return fn(batch)

    return in_turn


def executor_deadline(deadline_ns: int | None, slo_ms: float) -> int | None:
    """A request's wall-clock deadline on the executor's clock, when it is tighter than the stage's own SLO.

    The envelope's deadline is wall-clock time (it crosses processes and hosts); the executor keeps time by
    ``time.monotonic_ns``. A deadline further off than ``slo_ms`` leaves the executor its default
    (arrival + SLO), so a generous client deadline never makes a stage batch more lazily.
    """
    if deadline_ns is None:
        return None
    left_ns = deadline_ns - time.time_ns()
    if left_ns >= slo_ms * 1e6:
        return None
    return time.monotonic_ns() + left_ns


class DnnStage(Stage, Generic[H]):
    kind: Kind
    cpu_max_batch = CPU_MAX_BATCH

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self.executor: BatchExecutor | None = None
        self.requests_per_message = 1.0

    @property
    @abstractmethod
    def model_spec(self) -> tuple[str, str]:
        """(model name, weights) from the stage's settings section."""

    @property
    @abstractmethod
    def item_shape(self) -> tuple[int, ...]: ...

    @abstractmethod
    def build_fn(self, model: LoadedModel, device: str) -> Callable[[torch.Tensor], Any]:
        """The device function (the contract in ``visionpipe.executor.host_io``) for ``model`` on ``device``."""

    @abstractmethod
    def inputs(self, env: Envelope) -> tuple[H, Sequence[np.ndarray]]:
        """The hop this stage reads from ``env``, and the items to submit; raises ``HopError`` for a bad one."""

    @abstractmethod
    def output(self, env: Envelope, hop: H, results: list[Any]) -> Envelope:
        """The envelope for the next stage: ``results`` holds the device function's output for each item."""

    async def start(self) -> None:
        device = resolve_device(self.settings.service.device)
        name, weights = self.model_spec
        model = await asyncio.to_thread(load_model, self.kind, name, weights, self.settings.models.cache_dir)
        self.model = model
        fn = self.build_fn(model, device)
        if device == "cpu":
            fn = on_cpu(fn, getattr(self.settings, self.name).cpu_threads)  # its own section: detector, classifier
        self.executor = stage_executor(fn, self.item_shape, self.settings.executor, device, self.cpu_max_batch)
        self.executor.on_batch = self._on_batch
        self.executor.scheduler.on_dispatch = self._on_dispatch
        await self.executor.start()
        log.info("%s %s (%s weights) on %s", self.name, name, model.weights, device)

    async def submit(self, item: np.ndarray, deadline_ns: int | None = None) -> Any:
        """One item's output; ``deadline_ns``: this stage's deadline for the request (wall clock).

        The executor batches against it when it is tighter than the SLO, and takes the item out of its queue,
        unrun, with :class:`~visionpipe.executor.DeadlineExceeded` once it can no longer be met. ``item`` may be
        a read-only view of the received message: the device copies it straight into its (pinned) batch buffer
        on the stager thread, the only copy it gets.
        """
        assert self.executor is not None, "start() first"
        deadline = executor_deadline(deadline_ns, self.settings.executor.slo_ms)
        expire = None if deadline_ns is None else time.monotonic_ns() + deadline_ns - time.time_ns()
        return await self.executor.submit(item, deadline_ns=deadline, expire_ns=expire)

    async def _one(self, env: Envelope) -> Outcome:
        """Read the hop, submit its items, answer with the next hop, stamped with when the items went and came back.

        ``batch_start`` is stamped when the items are handed to the executor and ``compute_done`` when the last
        is back on the host, so the stage's share includes time in a forming device batch. Items go with this
        stage's part of the request's deadline; one taken out for want of time answers for the whole message.
        """
        try:
            hop, items = self.inputs(env)
        except HopError as exc:
            return BadInput(exc.reason)
        due = self.budgets.stage_deadline_ns(env) if self.budgets is not None else None
        start = time.time_ns()
        try:
            results = await asyncio.gather(*(self.submit(item, due) for item in items))
        except DeadlineExceeded as exc:
            return Expired(self.name, exc.late_s, WHY_QUEUE)
        except Exception as exc:  # transient (device, executor): the worker leaves it for redelivery
            return exc
        done = time.time_ns()
        out = self.output(env, hop, list(results))
        out.stamp(self.name, Event.BATCH_START, start)
        out.stamp(self.name, Event.COMPUTE_DONE, done)
        return out

    def expectation(self, backlog: int) -> Expectation | None:
        """From the executor's fitted model and rate: behind its queue and ``backlog`` messages' worth of requests."""
        if self.executor is None:
            return None
        per = self.requests_per_message
        return self.executor.scheduler.expectation(time.monotonic_ns(), backlog * per, items=per)

    @property
    def slo_feasible(self) -> bool:
        return bool(getattr(self.executor.policy, "slo_feasible", True)) if self.executor is not None else True

    @property
    def arrival_rate(self) -> float:
        return self.executor.scheduler.rate.rate(time.monotonic_ns()) if self.executor is not None else 0.0

    def requests_in(self, env: Envelope) -> int:
        """Executor requests this envelope becomes: one image; the classifier overrides (one per crop)."""
        return 1

    @property
    def prefetch_requests(self) -> int | None:
        if self.executor is None:
            return None
        return max(1, round(self.settings.service.prefetch_batches * self.executor.max_batch))

    def _on_batch(self, size: int, timings: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.device_batch.labels(self.name).observe(size)

    def _on_dispatch(self, batch: Batch) -> None:
        """Slack at dispatch: how long before its stage deadline each request's batch should be back."""
        if self.metrics is None:
            return
        slack = self.metrics.slack.labels(self.name)
        for r in batch.requests:
            if r.expire_ns is not None:
                slack.observe(max(r.expire_ns - batch.compute_end_est_ns, 0) / 1e9)

    @property
    def ready(self) -> bool:
        return self.executor is not None

    @property
    def weights(self) -> str | None:
        return self.model.weights if self.model is not None else None

    def observe_backlog(self, backlog: int) -> None:
        """The broker's backlog is in messages; the executor's arrival estimate counts requests."""
        if self.executor is not None:
            self.executor.observe_backlog(round(backlog * self.requests_per_message))

    async def stop(self) -> None:
        if self.executor is not None:
            await self.executor.stop()

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        for env in envelopes:
            self.requests_per_message += PER_MESSAGE_WEIGHT * (self.requests_in(env) - self.requests_per_message)
        return [self._one(env) for env in envelopes]
