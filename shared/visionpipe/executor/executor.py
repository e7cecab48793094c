"""``BatchExecutor``: the asyncio face of the scheduler, one per DNN service process.

Requests are submitted one at a time and awaited; the loop forms batches as
the policy says and hands each to the device through three host threads: a
stager (copies the items into the batch buffer and queues the upload), a
launcher (queues the computation and the download) — each one thread, in
dispatch order — and collectors (wait for completions). A batch goes from
thread to thread directly and comes back to the event loop once, with its
outputs: the loop never blocks on a GPU, never relays a batch between the
threads (at saturation it is busy enough settling request futures), and a
slow kernel launch never holds up the next batch's upload. A batch's
exception reaches every request in it and the loop goes on; a failure in the
loop itself is logged and the loop goes on too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from visionpipe.executor.device import Device
from visionpipe.executor.latency import LatencyModel
from visionpipe.executor.policy import BatchPolicy, Decision
from visionpipe.executor.scheduler import MAX_IN_FLIGHT_OVERLAP, Batch, DeadlineExceeded, Request, Scheduler
from visionpipe.settings import ExecutorSettings

log = logging.getLogger(__name__)

# After an unexpected loop error pause this long, so a persistent bug logs ~20 lines/s, not a flood.
LOOP_ERROR_BACKOFF_S = 0.05

BatchCallback = Callable[[int, dict[str, float]], None]


@dataclass(slots=True)
class _InFlight:
    """A dispatched batch on its way through the device threads, and where to hand its result back."""

    batch: Batch
    items: list[Any]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


class BatchExecutor:
    """Adaptive batching of single-item requests onto a ``Device`` (see ``policy`` for the rules)."""

    def __init__(
        self,
        device: Device,
        policy: BatchPolicy,
        settings: ExecutorSettings | None = None,
        *,
        model: LatencyModel | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.settings = settings or ExecutorSettings()
        self.device = device
        self.policy = policy
        self.model = model or LatencyModel(self.settings.history)
        self._seeded = model is not None
        self.scheduler = Scheduler(
            policy,
            self.model,
            max_batch=min(device.max_batch, self.settings.max_batch),
            overlap=device.overlap,
            slo_ns=int(self.settings.slo_ms * 1e6),
        )
        self.scheduler.on_expire = self._expired
        self.on_batch: BatchCallback | None = None
        self._clock = clock
        self._wake = asyncio.Event()
        self._wake_at_queued: int | None = 1
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._closed = False
        self._stager = ThreadPoolExecutor(1, thread_name_prefix="vp-stage")
        self._launcher = ThreadPoolExecutor(1, thread_name_prefix="vp-launch")
        self._collectors = ThreadPoolExecutor(MAX_IN_FLIGHT_OVERLAP, thread_name_prefix="vp-collect")

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    async def start(self) -> None:
        """Warm the device up, seed the latency model from two batch sizes, start the loop."""
        if self._task is not None:
            return
        if not self._seeded:
            sizes = [self.settings.warmup_small, self.max_batch]
            loop = asyncio.get_running_loop()
            samples = await loop.run_in_executor(
                self._launcher, self.device.warmup, sizes, self.settings.warmup_repeats
            )
            self.model.seed(samples)
        self._task = asyncio.create_task(self._loop(), name="visionpipe-executor")

    async def submit(self, item: Any, deadline_ns: int | None = None, expire_ns: int | None = None) -> Any:
        """This item's output (tensors on the host); raises what its batch raised.

        ``deadline_ns`` (monotonic, default arrival + SLO) is what the policy batches against; past ``expire_ns``
        the result is worth nothing, and the item is taken out of the queue the moment it can no longer be done
        by then, with :class:`DeadlineExceeded`.
        """
        if self._stopping or self._task is None:
            raise RuntimeError("executor is not running (start() it; submit() after stop() is an error)")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sched = self.scheduler
        head = sched.earliest_deadline_ns()
        urgent = deadline_ns is not None and head is not None and deadline_ns < head
        sched.add(self._clock(), (item, fut), deadline_ns, expire_ns)
        if urgent or expire_ns is not None or (self._wake_at_queued is not None and len(sched) >= self._wake_at_queued):
            self._wake.set()
        return await fut

    def _expired(self, request: Request, late_ns: int) -> None:
        fut: asyncio.Future[Any] = request.payload[1]
        if not fut.done():
            fut.set_exception(DeadlineExceeded(late_ns / 1e9))

    def observe_backlog(self, n: int) -> None:
        """Broker backlog of this stage's input: part of the arrival-rate estimate."""
        self.scheduler.rate.observe_backlog(n)

    async def stop(self) -> None:
        """Dispatch what is queued, finish in-flight batches, then stop the loop and the threads."""
        if self._closed:
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._stager.shutdown(wait=True)
        self._launcher.shutdown(wait=True)
        self._collectors.shutdown(wait=True)
        self._closed = True

    async def _loop(self) -> None:
        sched = self.scheduler
        while True:
            self._wake.clear()
            try:
                now = self._clock()
                if self._stopping and not len(sched):
                    if sched.in_flight == 0:
                        return
                    decision = Decision.wait()
                else:
                    decision = self._decide(now)
                if decision.dispatch > 0:
                    self._dispatch(sched.take(now, decision.dispatch))
                    continue
            except Exception:  # the loop must not die: log, back off, go on
                log.exception("executor loop error")
                await asyncio.sleep(LOOP_ERROR_BACKOFF_S)
                continue
            self._wake_at_queued = decision.wake_at_queued if len(sched) else 1
            timeout = None if decision.wake_at_ns is None else max(decision.wake_at_ns - self._clock(), 0) / 1e9
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _decide(self, now: int) -> Decision:
        decision = self.scheduler.next_action(now)
        if self._stopping and decision.dispatch == 0:
            gate = self.scheduler.gate_ns(now)
            if gate is not None and gate <= now:  # draining: do not wait for batches to fill
                return Decision(self.max_batch)
        return decision

    def _dispatch(self, batch: Batch) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._running.add(done)
        done.add_done_callback(self._running.discard)
        items = [r.payload[0] for r in batch.requests]
        self._stager.submit(self._stage, _InFlight(batch, items, loop, done))

    # The three steps below run on the stager, launcher and collector threads; each hands the batch to the next
    # thread itself, and only the collector's result (or the first exception) goes back to the event loop.
    def _stage(self, job: _InFlight) -> None:
        try:
            staged = self.device.stage(job.items)
            self._launcher.submit(self._launch, job, staged)
        except Exception as exc:
            self._back(job, exc)

    def _launch(self, job: _InFlight, staged: Any) -> None:
        try:
            handle = self.device.launch(staged)
            self._collectors.submit(self._collect, job, handle)
        except Exception as exc:
            self._back(job, exc)

    def _collect(self, job: _InFlight, handle: Any) -> None:
        try:
            outputs, timings = self.device.collect(handle)
            if len(outputs) != len(job.items):
                raise RuntimeError(f"device returned {len(outputs)} outputs for {len(job.items)} items")
        except Exception as exc:
            self._back(job, exc)
            return
        self._back(job, (outputs, timings))

    def _back(self, job: _InFlight, result: tuple[list[Any], dict[str, float]] | Exception) -> None:
        try:
            job.loop.call_soon_threadsafe(self._settle, job, result)
        except RuntimeError:  # the loop is closed: nobody is waiting for these requests any more
            log.warning("batch of %d finished after its event loop closed", len(job.items))

    def _settle(self, job: _InFlight, result: tuple[list[Any], dict[str, float]] | Exception) -> None:
        batch = job.batch
        futures: list[asyncio.Future[Any]] = [r.payload[1] for r in batch.requests]
        try:
            if isinstance(result, Exception):
                self.scheduler.fail(batch, self._clock())
                log.warning("batch of %d failed: %r", len(futures), result)
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(result)
            else:
                outputs, timings = result
                self.scheduler.complete(batch, self._clock(), timings)
                for fut, out in zip(futures, outputs, strict=True):
                    if not fut.done():
                        fut.set_result(out)
                self._report(batch, timings)
        finally:
            if not job.done.done():
                job.done.set_result(None)
            self._wake.set()

    def _report(self, batch: Batch, timings: dict[str, float]) -> None:
        if self.on_batch is None:
            return
        queue_s = sum(batch.dispatch_ns - r.arrival_ns for r in batch.requests) / batch.size / 1e9
        try:
            self.on_batch(batch.size, {"queue": queue_s, **timings})
        except Exception:
            log.exception("on_batch callback failed")
