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
import copy
import logging
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy.typing as npt
import torch

from visionpipe.envelope import Envelope, Event
from visionpipe.executor import BatchExecutor, DeadlineExceeded, LatencyModel, TorchDevice, make_policy
from visionpipe.executor.cuda_graphs import prepare_fn
from visionpipe.executor.expectation import Expectation
from visionpipe.executor.scheduler import Batch
from visionpipe.hops import WHY_QUEUE, HopError
from visionpipe.metrics import Metrics
from visionpipe.services.models.loading import Kind, LoadedModel, load_model
from visionpipe.services.runtime.cores import CPU, Demand
from visionpipe.services.runtime.instances import Instances, OnDevice, on_cpu, stage_devices
from visionpipe.services.runtime.stage import BadInput, Expired, Outcome, Stage
from visionpipe.settings import ExecutorSettings, InstanceSettings, Settings

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
    model: LatencyModel | None = None,
) -> BatchExecutor:
    """A ``BatchExecutor`` around ``fn`` on ``device``, built the same way for every DNN stage and instance.

    ``fn`` is compiled and graphed as the settings ask (graphs are captured in the device's warm-up); an
    executor given a latency ``model`` starts from it instead of warming up.
    """
    if device == "cpu" and settings.max_batch > cpu_max_batch:
        settings = settings.model_copy(update={"max_batch": cpu_max_batch})
    prepared = prepare_fn(fn, settings, device, settings.max_batch)
    if device.startswith("cuda:") and device != "cuda:0":  # a second GPU: made current around the model's work
        prepared = OnDevice(prepared, device)
    torch_device = TorchDevice(
        prepared,
        item_shape=item_shape,
        item_dtype=torch.uint8,
        max_batch=settings.max_batch,
        device=device,
        overlap=settings.overlap,
        pinned=settings.pinned,
    )
    return BatchExecutor(torch_device, make_policy(settings), settings, model=model)


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
        self.instances = Instances(self.name, self._build)
        self.instances.on_batch = self._on_batch
        self.instances.on_dispatch = self._on_dispatch
        self.requests_per_message = 1.0
        self._fns: dict[str, Callable[[torch.Tensor], Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sharing = False  # planned with the process's other stages (CPU instances)

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
    def inputs(self, env: Envelope) -> tuple[H, Sequence[npt.ArrayLike]]:
        """The hop this stage reads from ``env``, and the items to submit; raises ``HopError`` for a bad one."""

    @abstractmethod
    def output(self, env: Envelope, hop: H, results: list[Any]) -> Envelope:
        """The envelope for the next stage: ``results`` holds the device function's output for each item."""

    @property
    def section(self) -> InstanceSettings:
        """The stage's own settings section (detector, classifier): instances, threads, devices."""
        section: InstanceSettings = getattr(self.settings, self.name)
        return section

    @property
    def executor(self) -> BatchExecutor | None:
        """The first instance's executor (the only one on a single device with the defaults)."""
        return self.instances.live[0].executor if self.instances.live else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        section = self.section
        devices = stage_devices(section.devices or self.settings.service.device)
        name, weights = self.model_spec
        model = await asyncio.to_thread(load_model, self.kind, name, weights, self.settings.models.cache_dir)
        self.model = model
        if devices == ["cpu"]:
            await self._start_on_cpu(section)
        else:
            for device in devices:  # one warm-up each: graphs, kernels and buffers are per device
                for _ in range(section.instances or 1):
                    await self.instances.add(device, section.threads or torch.get_num_threads())
        log.info("%s %s (%s weights): %s", self.name, name, model.weights, self.instances.describe())

    async def _start_on_cpu(self, section: InstanceSettings) -> None:
        """One instance warms up and measures the work per item; the process's cores then say how many run."""
        cores = CPU.cores
        threads = section.threads or (max(1, cores // section.instances) if section.instances else 1)
        await self.instances.add("cpu", threads)
        self._sharing = True
        CPU.join(Demand(self.name, self._work_s(), threads, section.instances, self._apply))

    def _work_s(self) -> float:
        """Single-thread core-seconds per image: per item (warm-up's cost) times items per image."""
        return self.instances.cost_per_item_s() * self.requests_per_message

    def _apply(self, n: int) -> None:
        """The plan's instance count for this stage (called from whichever thread re-planned)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.instances.resize_soon, n)

    def _build(self, device: str, threads: int, model: LatencyModel | None) -> BatchExecutor:
        """An instance's executor: the device function built once per device, budgeted per instance on the CPU."""
        assert self.model is not None, "start() first"
        if device not in self._fns:
            first = not self._fns
            self._fns[device] = self.build_fn(self.model if first else copy.deepcopy(self.model), device)
        fn = self._fns[device]
        if device == "cpu":
            fn = on_cpu(fn, threads, self.name)
        return stage_executor(fn, self.item_shape, self.settings.executor, device, self.cpu_max_batch, model)

    async def submit(self, item: npt.ArrayLike, deadline_ns: int | None = None) -> Any:
        """One item's output; ``deadline_ns``: this stage's deadline for the request (wall clock).

        The executor batches against it when it is tighter than the SLO, and takes the item out of its queue,
        unrun, with :class:`~visionpipe.executor.DeadlineExceeded` once it can no longer be met. ``item`` may be
        a read-only view of the received message: the device copies it straight into its (pinned) batch buffer
        on the stager thread, the only copy it gets.
        """
        if not self.instances.live:
            raise RuntimeError(f"{self.name}: no instance running (start() first)")
        deadline = executor_deadline(deadline_ns, self.settings.executor.slo_ms)
        expire = None if deadline_ns is None else time.monotonic_ns() + deadline_ns - time.time_ns()
        return await self.instances.submit(item, deadline, expire)

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
        """From the executors' fitted models and rates: behind their queues and ``backlog`` messages of requests."""
        per = self.requests_per_message
        return self.instances.expectation(backlog * per, items=per)

    @property
    def slo_feasible(self) -> bool:
        return self.instances.slo_feasible

    @property
    def arrival_rate(self) -> float:
        return self.instances.arrival_rate

    def requests_in(self, env: Envelope) -> int:
        """Executor requests this envelope becomes: one image; the classifier overrides (one per crop)."""
        return 1

    @property
    def prefetch_requests(self) -> int | None:
        """Device batches' worth of requests per instance, so that every instance has one computing and one filling."""
        if not self.instances.live:
            return None
        batches = self.settings.service.prefetch_batches * len(self.instances.live)
        return max(1, round(batches * self.instances.max_batch))

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
        return bool(self.instances.live)

    @property
    def weights(self) -> str | None:
        return self.model.weights if self.model is not None else None

    def observe_backlog(self, backlog: int) -> None:
        """The broker's backlog is in messages; the executors' arrival estimates count requests."""
        self.instances.observe_backlog(round(backlog * self.requests_per_message))

    async def stop(self) -> None:
        if self._sharing:
            CPU.leave(self.name)
        await self.instances.stop()

    def items(self, envelopes: Sequence[Envelope]) -> list[Awaitable[Outcome]]:
        for env in envelopes:
            self.requests_per_message += PER_MESSAGE_WEIGHT * (self.requests_in(env) - self.requests_per_message)
        if self._sharing:  # the fan-out (crops per image) moves a stage's work per image: the plan may follow
            CPU.report(self.name, self._work_s())
        return [self._one(env) for env in envelopes]
