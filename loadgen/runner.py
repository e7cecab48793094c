"""One load run against one broker: send on schedule, read results back, stop by itself.

The sender and the readers are separate tasks so that a slow reply never
delays a send (open loop). Sends that fall due together are published as one
batch, and each keeps its own scheduled time; when ingress pushes back the
sender waits, and that wait is part of every delayed request's latency.
After the last send the run drains: it waits until every request has a
result or a dead letter, as long as results keep arriving (an overloaded
pipeline is slow, not lossy) and within a hard cap; whatever is still
missing then is reported as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from visionpipe import topology
from visionpipe.broker import Broker, BrokerError, connect, redact_url
from visionpipe.collector import Collected, Collector
from visionpipe.ingress import Backpressure, Frame, ensure_pipeline_streams, submit_images
from visionpipe.loadgen.payloads import ImageSet
from visionpipe.loadgen.recorder import Recorder
from visionpipe.loadgen.schedule import MAX_REQUESTS, LoadSpec, send_times
from visionpipe.settings import Settings

GROUP = "loadgen"  # the load generator's own consumer group on the results and dead-letter streams
SOURCE = "loadgen"
# Sends due within this window go out in one publish: fewer round trips when the sender is behind.
MAX_SEND_BATCH = 64
# Reader poll: short, because some clients wait the whole timeout when fewer than `count` arrive.
READ_TIMEOUT_S = 0.05
PROGRESS_TICK_S = 0.25
# However slowly results still trickle in, a run ends this long after its last send (bounded runs).
DRAIN_CAP_S = 600.0


@dataclass
class RunOptions:
    """How to run: the knobs that are not the load itself."""

    drain_timeout_s: float = 30.0  # after the last send: results lost once none has come for this long
    backpressure_wait_s: float = 10.0  # how long one send may wait at ingress before it counts as rejected
    warmup_requests: int = 4  # sent and awaited before measuring, so model start-up is not charged to a broker
    warmup_timeout_s: float = 180.0
    progress: bool = True
    label: str = ""
    deadline_ms: float | None = None  # each request's deadline, from its scheduled send time


@dataclass
class RunResult:
    broker: str
    spec: LoadSpec
    summary: dict[str, Any]
    started_wall_ns: int
    elapsed_s: float
    resources: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    round: int = 1  # which repetition of the comparison (1 when it runs once)


class _Dispatch:
    """Routes each result/dead letter to the warm-up or the measured recorder; wakes closed-loop waiters."""

    def __init__(self, warm: Recorder, main: Recorder) -> None:
        self.warm, self.main = warm, main
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.undecodable = 0

    def _recorder(self, rid: str | None) -> Recorder:
        return self.warm if rid is not None and rid in self.warm.scheduled else self.main

    def _wake(self, rid: str | None) -> None:
        fut = self.waiters.pop(rid, None) if rid is not None else None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def __call__(self, batch: Collected) -> None:
        self.undecodable += batch.undecodable
        for env in batch.results:
            self._recorder(env.request_id).on_result(env, batch.mono_ns, batch.wall_ns)
            self._wake(env.request_id)
        for env, expiry in batch.expired:
            self._recorder(env.request_id).on_expired(env, expiry)
            self._wake(env.request_id)
        for letter in batch.dead:
            self._recorder(letter.request_id).on_dead_letter(letter)
            self._wake(letter.request_id)


@dataclass
class _Run:
    """What every part of one load run shares."""

    broker: Broker
    settings: Settings
    images: ImageSet
    opts: RunOptions
    dispatch: _Dispatch


async def _read(collector: Collector, dispatch: _Dispatch, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await collector.poll(READ_TIMEOUT_S, dispatch)
        except BrokerError:
            await asyncio.sleep(READ_TIMEOUT_S)  # transient; the drain bound ends the run if it lasts


async def _submit(run: _Run, rec: Recorder, batch: list[tuple[str, int, bytes]], wait_s: float) -> None:
    for rid, sched_ns, _ in batch:
        rec.sent(rid, sched_ns)
    ms = run.opts.deadline_ms
    frames = [
        Frame(image, rid, SOURCE, deadline_ns=None if ms is None else rec.wall_ns(sched) + int(ms * 1e6))
        for rid, sched, image in batch
    ]
    try:
        await submit_images(run.broker, run.settings, frames, wait_s=wait_s)
    except Backpressure as exc:
        for rid, _, _ in batch:
            rec.rejected(rid, f"backpressure: {exc}")
    except BrokerError as exc:
        for rid, _, _ in batch:
            rec.rejected(rid, f"broker error: {exc}")


async def _open_loop(run: _Run, rec: Recorder, spec: LoadSpec) -> None:
    offsets = send_times(spec)
    i = 0
    while i < len(offsets):
        now = time.monotonic_ns()
        due_ns = rec.mono0_ns + int(offsets[i] * 1e9)
        if due_ns > now:
            await asyncio.sleep((due_ns - now) / 1e9)
            continue
        batch: list[tuple[str, int, bytes]] = []
        while i < len(offsets) and len(batch) < MAX_SEND_BATCH:
            sched = rec.mono0_ns + int(offsets[i] * 1e9)
            if sched > now:
                break
            batch.append((f"{rec.run_id}-{i}", sched, run.images.pick(i)))
            i += 1
        await _submit(run, rec, batch, run.opts.backpressure_wait_s)


async def _closed_loop(run: _Run, rec: Recorder, spec: LoadSpec) -> None:
    end_ns = rec.mono0_ns + int(spec.duration_s * 1e9)
    counter = iter(range(MAX_REQUESTS))

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic_ns() < end_ns:
            n = next(counter, None)
            if n is None:
                return
            rid = f"{rec.run_id}-{n}"
            fut: asyncio.Future[None] = loop.create_future()
            run.dispatch.waiters[rid] = fut
            await _submit(run, rec, [(rid, time.monotonic_ns(), run.images.pick(n))], run.opts.backpressure_wait_s)
            if rid in rec.failed:
                run.dispatch.waiters.pop(rid, None)
                continue
            remaining = max(0.0, (end_ns - time.monotonic_ns()) / 1e9) + run.opts.drain_timeout_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, remaining)

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))


async def _warm_up(run: _Run, warm: Recorder) -> None:
    opts = run.opts
    if opts.warmup_requests <= 0:
        return
    now = time.monotonic_ns()
    batch = [(f"{warm.run_id}-{i}", now, run.images.pick(i)) for i in range(opts.warmup_requests)]
    await _submit(run, warm, batch, opts.warmup_timeout_s)
    deadline = time.monotonic() + opts.warmup_timeout_s
    while warm.outstanding and time.monotonic() < deadline:
        await asyncio.sleep(PROGRESS_TICK_S)
    if warm.outstanding:
        raise RuntimeError(
            f"warm-up: {warm.outstanding} of {opts.warmup_requests} requests got no result in "
            f"{opts.warmup_timeout_s:g} s; are the stages running on this broker and stream prefix?"
        )


async def run_load(
    settings: Settings,
    spec: LoadSpec,
    images: ImageSet,
    opts: RunOptions | None = None,
    measuring: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
) -> RunResult:
    """Offer ``spec`` to the pipeline behind ``settings.broker.url``; returns what was measured.

    ``measuring`` wraps the measured window only (after warm-up), e.g. a resource sampler.
    """
    opts = opts or RunOptions()
    spec.validate()
    run_id = uuid.uuid4().hex[:8]
    broker = await connect(settings.broker.url, settings)
    try:
        await ensure_pipeline_streams(broker, settings)
        collector = await Collector(broker, settings, GROUP, f"{SOURCE}-{run_id}").open()
        warm = Recorder(f"{run_id}w", time.time_ns(), time.monotonic_ns())
        main = Recorder(run_id, 0, 0)
        dispatch = _Dispatch(warm, main)
        run = _Run(broker, settings, images, opts, dispatch)
        stop = asyncio.Event()
        readers = [asyncio.create_task(_read(collector, dispatch, stop))]
        try:
            await _warm_up(run, warm)
            async with measuring() if measuring else contextlib.nullcontext():
                main.wall0_ns, main.mono0_ns = time.time_ns(), time.monotonic_ns()
                await _measure(run, main, spec)
        finally:
            stop.set()
            outcomes = await asyncio.gather(*readers, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:  # a reader that died would turn every later result into a "loss": say why instead
            raise RuntimeError(f"reading results failed: {failed[0]!r}") from failed[0]
        elapsed = (time.monotonic_ns() - main.mono0_ns) / 1e9
        summary = main.summary(spec.duration_s)
        summary["undecodable"] = dispatch.undecodable
        summary["warmup"] = {"requests": opts.warmup_requests, "latency_ms": warm.summary(1.0)["latency_ms"]}
        return RunResult(redact_url(settings.broker.url), spec, summary, main.wall0_ns, elapsed)
    finally:
        await broker.close()


async def _measure(run: _Run, rec: Recorder, spec: LoadSpec) -> None:
    from visionpipe.loadgen.progress import LiveProgress

    opts = run.opts
    with LiveProgress(rec, spec, opts.label or redact_url(run.settings.broker.url), enabled=opts.progress) as live:
        if spec.pattern == "closed":
            sender = asyncio.create_task(_closed_loop(run, rec, spec))
        else:
            sender = asyncio.create_task(_open_loop(run, rec, spec))
        while not sender.done():
            live.update()
            await asyncio.wait({sender}, timeout=PROGRESS_TICK_S)
        sender.result()
        live.draining()
        await _drain(rec, opts, live.update)
        live.update()


async def _drain(rec: Recorder, opts: RunOptions, tick: Callable[[], None]) -> None:
    """Wait for outstanding results while they keep coming: give up after ``drain_timeout_s`` without
    any, or after DRAIN_CAP_S in all. An overloaded pipeline is slow, not lossy; only silence means lost."""
    cap = time.monotonic() + DRAIN_CAP_S
    last_progress, last_seen = time.monotonic(), len(rec.done) + len(rec.failed)
    while rec.outstanding and time.monotonic() < cap:
        seen = len(rec.done) + len(rec.failed)
        if seen != last_seen:
            last_progress, last_seen = time.monotonic(), seen
        elif time.monotonic() - last_progress > opts.drain_timeout_s:
            return
        tick()
        await asyncio.sleep(PROGRESS_TICK_S)


async def delete_streams(settings: Settings) -> None:
    """Remove every stream of the run's prefix (after the stages have stopped)."""
    broker = await connect(settings.broker.url, settings)
    try:
        for stream in (*topology.stream_names(settings), topology.state_stream(settings)):
            await broker.delete(stream)
    finally:
        await broker.close()
