"""What ``visionpipe run IMAGES...`` does once its checks have passed: the whole pipeline in one process.

All three stages run as tasks of one event loop on the embedded in-memory
broker (or a real one with ``--broker``), exactly the code ``visionpipe
serve`` runs, so what works here works as services. Inputs go in through
the ingress (backpressure applies), results and dead letters are collected
per request into ``results.jsonl`` in input order, and the summary says what
was found in each image, throughput, latency percentiles and where the time went.

Kept apart from the command (``run.py``) because it imports torch: the command
checks its arguments and the broker before paying for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from visionpipe import topology
from visionpipe.breakdown import Split, categories_ms, segments
from visionpipe.broker import Broker, redact_url
from visionpipe.collector import Collected, Collector
from visionpipe.envelope import COPIED
from visionpipe.executor.torch_device import resolve_device
from visionpipe.hops import caption
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images
from visionpipe.services.commands.run import walk
from visionpipe.services.runtime.cores import CPU
from visionpipe.services.runtime.dnn_stage import DnnStage
from visionpipe.services.runtime.local import STARTED_POLL_S, LocalStages
from visionpipe.settings import Settings
from visionpipe.threads import ThreadCensus
from visionpipe.topology import CLASSIFIER, DECODE, DETECTOR

log = logging.getLogger(__name__)

COLLECTOR = "run-collector"
# Collector's consume timeout: short, so results and dead letters are read alternately without delaying either.
COLLECT_TIMEOUT_S = 0.05
MAX_SOURCE_CHARS = 256  # the envelope's limit on `source`
NO_RESULT = {"ok": False, "stage": "run", "error": "no result"}


@dataclass
class Input:
    path: Path
    request_id: str
    error: str | None = None  # known before submission: unreadable, too big


@dataclass
class RunSummary:
    inputs: int = 0
    ok: int = 0
    bad: int = 0
    startup_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the whole process (every thread) while the images went through
    elapsed_s: float = 0.0
    weights: dict[str, str] = field(default_factory=dict)
    decoder: str = ""
    device: str = ""
    broker: str = ""
    split: Split = field(default_factory=Split)
    errors: dict[str, int] = field(default_factory=dict)
    # What was found: per image (file, objects, how each reads), per detector label, and each bad file's reason.
    found: list[tuple[str, int, list[str]]] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    # How the cores were shared: per stage its instances, threads each, devices and busy share of the cores.
    cores: dict[str, Any] = field(default_factory=dict)
    threads: dict[str, Any] = field(default_factory=dict)  # visionpipe.threads.ThreadCensus over the run
    copied_bytes: int = 0  # envelope bytes encoded and decoded while the images went through
    deadline_ms: float | None = None
    deadline_exceeded: int = 0  # answered deadline_exceeded by a stage, early
    late: int = 0  # results that came after their deadline

    @property
    def images_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Machine-readable summary (``--summary-json``), the source of benchmarks/RESULTS.md's pipeline figures."""
        return {
            "inputs": self.inputs,
            "ok": self.ok,
            "bad": self.bad,
            "images_per_s": round(self.images_per_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "startup_s": round(self.startup_s, 3),
            # Beside images/s: what the pipeline cost, which other jobs on a shared machine do not move much.
            "cpu_ms_per_image": round(self.cpu_s / self.ok * 1e3, 1) if self.ok else None,
            "latency_ms": {
                "p50": round(self.split.percentile(50) * 1e3, 2),
                "p99": round(self.split.percentile(99) * 1e3, 2),
                "samples": len(self.split.totals),
            },
            "share": {k: round(v, 4) for k, v in self.split.share.items()},
            "mean_ms_per_request": {k: round(v, 2) for k, v in self.split.mean_ms().items()},
            "broker_hop_floor_ms": round(self.split.hop_floor_s * 1e3, 2),
            "device": self.device,
            "decoder": self.decoder,
            "broker": self.broker,
            "weights": self.weights,
            "errors": self.errors,
            "labels": dict(self.labels.most_common()),
            "bad_files": [{"file": f, "reason": r} for f, r in self.bad_files],
            "cores": self.cores,
            "threads": self.threads,
            "copied_bytes_per_image": round(self.copied_bytes / self.ok) if self.ok else None,
            "deadline": {"ms": self.deadline_ms, "exceeded": self.deadline_exceeded, "late": self.late},
        }


async def run_pipeline(
    paths: Sequence[Path],
    settings: Settings,
    out: Path,
    broker: Broker,
    console: Console | None = None,
    external: bool = False,
) -> RunSummary:
    """Every image of ``paths`` through ``broker`` (connected with ``settings``, whose streams are this run's own).

    ``external``: the stages run elsewhere (``visionpipe serve``) on this broker and stream prefix: only submit
    and collect, and delete nothing after the run (the streams are theirs).
    """
    inputs = [Input(p, f"{i:06d}-{uuid.uuid4().hex[:8]}") for i, p in enumerate(walk(paths))]
    summary = RunSummary(
        inputs=len(inputs), broker=redact_url(settings.broker.url), deadline_ms=settings.limits.default_deadline_ms
    )
    try:
        await ensure_pipeline_streams(broker, settings)
        collector = await Collector(broker, settings, COLLECTOR, "run").open()  # Kafka joins during model load
        async with contextlib.AsyncExitStack() as stack:
            stages = None
            if not external:
                stages = await stack.enter_async_context(LocalStages(broker, settings))
                t0 = time.monotonic()
                await _start(stages, console)
                summary.startup_s = time.monotonic() - t0
            records = await _measured(summary, _process(inputs, broker, settings, collector, stages, summary, console))
            if stages is not None:
                _describe(summary, stages, settings)
            else:  # the stages' processes shared their own cores
                summary.cores = {}
        _write(out, inputs, records)
        _tally(summary, inputs, records)
    finally:
        if not external:
            for stream in (*topology.stream_names(settings), topology.state_stream(settings)):
                await broker.delete(stream)
        await broker.close()
    return summary


async def _measured(summary: RunSummary, work: Awaitable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``work`` (the images going through), with what it cost: CPU time, threads that ran, bytes copied, busy time."""
    cpu, copied, busy = time.process_time(), COPIED.bytes, dict(CPU.budget.busy_s)
    census = ThreadCensus().start()
    records = await work
    summary.cpu_s = time.process_time() - cpu
    summary.threads = census.stop(CPU.cores)
    summary.copied_bytes = COPIED.bytes - copied
    capacity = max(summary.elapsed_s, 1e-9) * CPU.cores
    summary.cores = {
        "cores": CPU.cores,
        "busy_share": {k: round((v - busy.get(k, 0.0)) / capacity, 3) for k, v in CPU.budget.busy_s.items()},
    }
    return records


async def _start(stages: LocalStages, console: Console | None) -> None:
    """Until every stage has started, saying which are ready: loading and warming up the models takes seconds."""
    waiting = [w.name for w in stages.workers]
    if console is not None:
        console.print(f"starting {', '.join(waiting)} (loading models, warming up)…")
    t0 = time.monotonic()
    while waiting:
        stages.check()
        for w in stages.workers:
            if w.name in waiting and w.started:
                waiting.remove(w.name)
                if console is not None:
                    console.print(f"  {w.name} ready after {time.monotonic() - t0:.1f} s")
        await asyncio.sleep(STARTED_POLL_S)


def _describe(summary: RunSummary, stages: LocalStages, settings: Settings) -> None:
    """Decoder, weights, device, and how each stage ran: instances × threads on which devices, busy share."""
    summary.decoder = str(getattr(stages.stage(DECODE), "backend", ""))
    summary.weights = {k: str(stages.stage(k).weights) for k in (DETECTOR, CLASSIFIER)}
    summary.device = resolve_device(settings.service.device)
    busy = summary.cores.pop("busy_share", {})
    decode = getattr(stages.stage(DECODE), "decoder", None)
    threads = getattr(decode, "threads", settings.decode.workers or CPU.cores)
    runs = {DECODE: {"instances": 1, "threads": threads, "devices": [summary.decoder]}}
    for name in (DETECTOR, CLASSIFIER):
        stage = stages.stage(name)
        runs[name] = stage.instances.describe() if isinstance(stage, DnnStage) else {}
        registry = stages.metrics(name).registry
        batches = registry.get_sample_value("visionpipe_device_batch_size_count", {"stage": name})
        items = registry.get_sample_value("visionpipe_device_batch_size_sum", {"stage": name})
        if batches:
            runs[name]["mean_batch"] = round((items or 0.0) / batches, 2)
    summary.cores["stages"] = {k: {**v, "busy_share": busy.get(k)} for k, v in runs.items()}


async def _process(
    inputs: list[Input],
    broker: Broker,
    settings: Settings,
    collector: Collector,
    stages: LocalStages | None,
    summary: RunSummary,
    console: Console | None,
) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    by_id = {i.request_id: i for i in inputs}
    progress = Progress(
        TextColumn("[bold]visionpipe run"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=False,
    )
    split = Split()
    with progress:
        bar = progress.add_task("images", total=len(inputs))
        start = time.monotonic()
        submitter = asyncio.create_task(_submit(inputs, broker, settings, records))
        while len(records) < len(inputs):
            if submitter.done():
                submitter.result()  # its error, if it failed
            if stages is not None:
                stages.check()
            await collector.poll(COLLECT_TIMEOUT_S, lambda batch: _record(batch, by_id, records, split))
            progress.update(bar, completed=len(records))
        await submitter
        summary.elapsed_s = time.monotonic() - start
    summary.split = split
    return records


def _tally(summary: RunSummary, inputs: list[Input], records: dict[str, dict[str, Any]]) -> None:
    """Per image, in input order: what was found, or why it was not read."""
    for item in inputs:
        rec = records.get(item.request_id, NO_RESULT)
        summary.late += bool(rec.get("late"))
        summary.deadline_exceeded += bool(rec.get("deadline_exceeded"))
        if rec["ok"]:
            summary.ok += 1
            objects = rec.get("objects") or []
            summary.found.append((item.path.name, len(objects), [caption(o) for o in objects]))
            summary.labels.update(o.get("label_name") or str(o.get("label")) for o in objects)
        else:
            summary.bad += 1
            kind = rec["error"].split(":")[0]  # "not an image", "cannot decode JPEG", "image of ... exceeds"
            summary.errors[kind] = summary.errors.get(kind, 0) + 1
            summary.bad_files.append((item.path.name, rec["error"]))


async def _submit(inputs: list[Input], broker: Broker, settings: Settings, records: dict[str, dict[str, Any]]) -> None:
    limit, deadline_ms = settings.limits.max_image_bytes, settings.limits.default_deadline_ms
    chunk: list[Frame] = []
    for item in inputs:
        try:
            size = item.path.stat().st_size
            if size > limit:
                raise ValueError(f"file of {size} bytes exceeds the limit of {limit}")
            data = item.path.read_bytes()
        except (OSError, ValueError) as exc:
            records[item.request_id] = {"ok": False, "stage": "ingress", "error": f"cannot read: {exc}"}
            continue
        due = None if deadline_ms is None else time.time_ns() + int(deadline_ms * 1e6)
        chunk.append(Frame(data, item.request_id, str(item.path)[-MAX_SOURCE_CHARS:], deadline_ns=due))
        if len(chunk) >= settings.decode.batch:
            await submit_images(broker, settings, chunk)
            chunk = []
    if chunk:
        await submit_images(broker, settings, chunk)


def _record(batch: Collected, by_id: dict[str, Input], records: dict[str, dict[str, Any]], split: Split) -> None:
    """Keep the first outcome of each of our requests: its result with its latency split, its early answer
    (deadline_exceeded), or its dead letter.

    A request's time runs from its enqueue at ingress (file reading is not the pipeline's) to this read.
    """
    for env in batch.results:
        if env.request_id in by_id and env.request_id not in records:  # a redelivered duplicate is counted once
            start = env.ts(topology.INGRESS, "enqueued")
            parts = segments(env, start, batch.wall_ns) if start is not None else {}
            if parts:
                split.add(parts)
            late = env.deadline_ns is not None and batch.wall_ns > env.deadline_ns
            records[env.request_id] = {"ok": True, **env.payload, "latency_ms": categories_ms(parts), "late": late}
    for env, expiry in batch.expired:
        if env.request_id in by_id and env.request_id not in records:
            error = f"deadline_exceeded: {expiry.reason()}"
            records[env.request_id] = {"ok": False, "stage": expiry.stage, "error": error, "deadline_exceeded": True}
    for entry in batch.dead:
        if entry.request_id in by_id and entry.request_id not in records:
            records[entry.request_id] = {"ok": False, "stage": entry.stage, "error": entry.reason}


def _write(out: Path, inputs: list[Input], records: dict[str, dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for item in inputs:
            rec = records.get(item.request_id, NO_RESULT)
            fh.write(json.dumps({"path": str(item.path), "request_id": item.request_id, **rec}) + "\n")
