"""``visionpipe run IMAGES...``: the whole pipeline in one process, the first thing a new user tries.

All three stages run as tasks of one event loop on the embedded in-memory
broker (or a real one with ``--broker``), exactly the code ``visionpipe
serve`` runs, so what works here works as services. Inputs go in through
the ingress (backpressure applies), results and dead letters are collected
per request into ``results.jsonl`` in input order, and a summary table says
throughput, latency percentiles and where the time went.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from visionpipe import topology
from visionpipe.breakdown import Split, categories_ms, segments
from visionpipe.broker import Broker, connect, redact_url
from visionpipe.collector import Collected, Collector
from visionpipe.executor.torch_device import resolve_device
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images
from visionpipe.logs import setup_logging
from visionpipe.samples import shipped_samples
from visionpipe.services.commands.serve import cli_settings
from visionpipe.services.commands.summary import print_summary
from visionpipe.services.models.registry import WeightsUnavailable
from visionpipe.services.runtime.local import LocalStages
from visionpipe.settings import Settings
from visionpipe.topology import CLASSIFIER, DECODE, DETECTOR

log = logging.getLogger(__name__)

COLLECTOR = "run-collector"
# Collector's consume timeout: short, so results and dead letters are read alternately without delaying either.
COLLECT_TIMEOUT_S = 0.05
MAX_SOURCE_CHARS = 256  # the envelope's limit on `source`


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
            },
            "share": {k: round(v, 4) for k, v in self.split.share.items()},
            "mean_ms_per_request": {k: round(v, 2) for k, v in self.split.mean_ms().items()},
            "broker_hop_floor_ms": round(self.split.hop_floor_s * 1e3, 2),
            "device": self.device,
            "decoder": self.decoder,
            "broker": self.broker,
            "weights": self.weights,
            "errors": self.errors,
            "deadline": {"ms": self.deadline_ms, "exceeded": self.deadline_exceeded, "late": self.late},
        }


def walk(paths: Sequence[Path]) -> Iterator[Path]:
    """Files named, and every file under directories named, in sorted order; hidden files skipped in walks."""
    for p in paths:
        if p.is_dir():
            yield from sorted(
                f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts)
            )
        else:
            yield p


def isolated(settings: Settings) -> Settings:
    """A copy whose streams (and memory store) belong to this run alone, so runs never see each other's messages."""
    tag = uuid.uuid4().hex[:8]
    url = f"memory://run-{tag}" if settings.broker.url.startswith("memory://") else settings.broker.url
    streams = settings.streams.model_copy(update={"prefix": f"{settings.streams.prefix}-run-{tag}"})
    return settings.model_copy(update={"broker": settings.broker.model_copy(update={"url": url}), "streams": streams})


async def run_pipeline(
    paths: Sequence[Path], settings: Settings, out: Path, console: Console | None = None
) -> RunSummary:
    settings = isolated(settings)
    inputs = [Input(p, f"{i:06d}-{uuid.uuid4().hex[:8]}") for i, p in enumerate(walk(paths))]
    summary = RunSummary(
        inputs=len(inputs), broker=redact_url(settings.broker.url), deadline_ms=settings.limits.default_deadline_ms
    )
    broker = await connect(settings=settings)
    try:
        await ensure_pipeline_streams(broker, settings)
        collector = await Collector(broker, settings, COLLECTOR, "run").open()  # Kafka joins during model load
        async with LocalStages(broker, settings) as stages:
            t0 = time.monotonic()
            await stages.wait_started()
            summary.startup_s = time.monotonic() - t0
            _describe(summary, stages, settings)
            cpu = time.process_time()
            records = await _process(inputs, broker, settings, collector, stages, summary, console)
            summary.cpu_s = time.process_time() - cpu
        _write(out, inputs, records)
    finally:
        for stream in (*topology.stream_names(settings), topology.state_stream(settings)):
            await broker.delete(stream)
        await broker.close()
    return summary


def _describe(summary: RunSummary, stages: LocalStages, settings: Settings) -> None:
    summary.decoder = str(getattr(stages.stage(DECODE), "backend", ""))
    summary.weights = {k: str(stages.stage(k).weights) for k in (DETECTOR, CLASSIFIER)}
    summary.device = resolve_device(settings.service.device)


async def _process(
    inputs: list[Input],
    broker: Broker,
    settings: Settings,
    collector: Collector,
    stages: LocalStages,
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
            stages.check()
            await collector.poll(COLLECT_TIMEOUT_S, lambda batch: _record(batch, by_id, records, split))
            progress.update(bar, completed=len(records))
        await submitter
        summary.elapsed_s = time.monotonic() - start
    summary.split = split
    for rec in records.values():
        summary.late += bool(rec.get("late"))
        summary.deadline_exceeded += bool(rec.get("deadline_exceeded"))
        if rec["ok"]:
            summary.ok += 1
        else:
            summary.bad += 1
            kind = rec["error"].split(":")[0]  # "not an image", "cannot decode JPEG", "image of ... exceeds"
            summary.errors[kind] = summary.errors.get(kind, 0) + 1
    return records


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
    """Keep the first outcome of each of our requests: its result with its latency split, or its dead letter.

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
            rec = records.get(item.request_id, {"ok": False, "stage": "run", "error": "no result"})
            fh.write(json.dumps({"path": str(item.path), "request_id": item.request_id, **rec}) + "\n")


@click.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("results.jsonl"), show_default=True
)
@click.option("--broker", help="memory:// (default, in-process), redis://host:port/db or kafka://host:port")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="where models and GPU decode run")
@click.option("--detector", help="detector model: nanodet_g (bundled, the default) or a torchvision detection model")
@click.option(
    "--classifier", help="classifier model: efficientnet_lite0 (bundled, the default) or a torchvision classifier"
)
@click.option(
    "--weights",
    help="DEFAULT, random or a torchvision weights name, for both models; for files set "
    "VISIONPIPE_DETECTOR__WEIGHTS and VISIONPIPE_CLASSIFIER__WEIGHTS",
)
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML, YAML or JSON settings file (env VISIONPIPE_* and flags override it)",
)
@click.option(
    "--score-threshold", type=float, help="detector score threshold (default 0.4, fits NanoDet; 0 keeps the top boxes)"
)
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), help="also write the summary as JSON")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--serve", is_flag=True, help="instead of IMAGES: serve every stage plus the HTTP gateway and its page")
@click.option("--port", type=int, help="--serve: the gateway's port (default service.port, 8000; 0: any free one)")
@click.option(
    "--deadline-ms",
    type=click.FloatRange(min=1.0),
    help="each image's deadline from its submission: a stage that cannot make it answers deadline_exceeded",
)
def run(
    images: tuple[Path, ...],
    out: Path,
    broker: str | None,
    device: str | None,
    detector: str | None,
    classifier: str | None,
    weights: str | None,
    settings_file: Path | None,
    score_threshold: float | None,
    summary_json: Path | None,
    quiet: bool,
    serve: bool,
    port: int | None,
    deadline_ms: float | None,
) -> None:
    """Run decode -> detector -> classifier over IMAGES (files or directories; default: the shipped samples)."""
    settings = cli_settings(settings_file, broker, device, weights, detector, classifier, port=port)
    if deadline_ms is not None:
        settings.limits.default_deadline_ms = deadline_ms
    if score_threshold is not None:
        settings.detector.score_threshold = score_threshold
    setup_logging("WARNING" if settings.service.log_level.upper() == "INFO" else settings.service.log_level)
    console = Console(stderr=True)
    if serve:
        import uvloop

        from visionpipe.services.commands.run_serve import serve_locally

        uvloop.run(serve_locally(settings, Console()))
        return
    paths = list(images) or shipped_samples()
    if not images:
        console.print(f"no IMAGES given: running the {len(paths)} shipped samples")
    try:
        summary = asyncio.run(run_pipeline(paths, settings, out, None if quiet else console))
    except WeightsUnavailable as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    print_summary(summary, out, Console())
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
