"""The same load over each broker, back to back, with the same pipeline: the broker decision, measured.

For every broker URL in turn: start decode, detector and classifier against
it (or use stages already running, ``external``), offer the load, stop the
stages, delete the run's streams, and keep what was measured, including the
broker process's CPU and memory. Brokers run one after another, never at the
same time, so they do not compete for the host's cores; each run gets its
own stream prefix so nothing of one run can reach the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from visionpipe.loadgen.payloads import ImageSet
from visionpipe.loadgen.resources import ResourceSampler, broker_process, identify_broker
from visionpipe.loadgen.runner import RunOptions, RunResult, delete_streams, run_load
from visionpipe.loadgen.schedule import LoadSpec
from visionpipe.loadgen.stages import StageOptions, StageSet, batch_means
from visionpipe.settings import Settings

# A pause between brokers so the previous run's processes have exited and freed the cores.
SETTLE_S = 1.0


@dataclass
class CompareOptions:
    brokers: list[str]
    spec: LoadSpec
    images: ImageSet
    out_dir: Path
    run: RunOptions = field(default_factory=RunOptions)
    stages: StageOptions = field(default_factory=StageOptions)
    external: bool = False  # stages already running (compose, Kubernetes): use the settings' prefix, delete nothing
    keep: bool = False  # keep the run's streams/topics for inspection
    rounds: int = 1  # repetitions in ABBA order, so a slow drift on a shared host hits every broker alike


def broker_label(url: str) -> str:
    """``redis://127.0.0.1:6379/0`` → ``redis``; a local ``kafka://`` broker → ``apache-kafka`` or ``tansu``; a
    URL's ``#fragment`` → itself. The name used in tables and plots (see ``identify_broker``)."""
    return identify_broker(url)[0]


def settings_for(base: Settings, url: str, prefix: str | None) -> Settings:
    """The base settings pointed at ``url`` (less a naming ``#fragment``) and (when given) a stream prefix of the
    run's own."""
    update: dict[str, Any] = {"broker": base.broker.model_copy(update={"url": url.split("#", 1)[0]})}
    if prefix is not None:
        update["streams"] = base.streams.model_copy(update={"prefix": prefix})
    return base.model_copy(update=update)


def run_order(brokers: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, url) in ABBA order: odd rounds forward, even rounds reversed, so each broker runs as often
    early as late and a host that gets busier (or quieter) during the comparison favours none of them."""
    order = []
    for r in range(1, rounds + 1):
        order += [(r, url) for url in (brokers if r % 2 else list(reversed(brokers)))]
    return order


@dataclass
class Pipeline:
    """One broker's pipeline for a while: its settings, the stages started for it (None: external), notes."""

    url: str
    settings: Settings
    stages: StageSet | None
    notes: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def pipeline(base: Settings, url: str, opts: CompareOptions) -> AsyncIterator[Pipeline]:
    """Stages up for ``url`` (unless external), then down, and the streams deleted (unless kept or external)."""
    prefix = None if opts.external else f"lg{uuid.uuid4().hex[:8]}"
    settings = settings_for(base, url, prefix)
    stages: StageSet | None = None
    if not opts.external:
        stages = StageSet(url, settings.streams.prefix, opts.stages, opts.out_dir / "logs")
        await asyncio.to_thread(stages.start)
    p = Pipeline(url, settings, stages)
    try:
        yield p
    finally:
        if stages is not None:
            codes = await asyncio.to_thread(stages.stop)
            bad = {s: c for s, c in codes.items() if c not in (0, None)}
            if bad:
                p.notes.append(f"stages exited with non-zero codes {bad}; logs in {opts.out_dir / 'logs'}")
        if opts.external:
            p.notes.append(f"external stages: streams of prefix {settings.streams.prefix!r} belong to them, kept")
        elif opts.keep:
            p.notes.append(f"streams of prefix {settings.streams.prefix!r} kept (--keep)")
        else:
            await delete_streams(settings)


async def measure(p: Pipeline, opts: CompareOptions, spec: LoadSpec, label: str, round_no: int = 1) -> RunResult:
    """One load run on a pipeline that is up, with the broker's and the stages' CPU and memory sampled."""
    watched: dict[str, psutil.Process] = {}
    notes: list[str] = []
    bproc = broker_process(p.url)
    if bproc is not None:
        watched["broker"] = bproc
    else:
        notes.append("broker process not on this host or not visible: CPU and memory not measurable")
    for stage, pid in (p.stages.pids() if p.stages else {}).items():
        with contextlib.suppress(psutil.Error):
            watched[stage] = psutil.Process(pid)
    sampler = ResourceSampler(watched)
    batches: dict[str, dict[str, float]] = {}
    stages = p.stages

    @contextlib.asynccontextmanager
    async def measuring() -> AsyncIterator[None]:
        before = await asyncio.to_thread(stages.scrape) if stages else {}
        async with sampler:
            yield
        if stages:
            batches.update(batch_means(before, await asyncio.to_thread(stages.scrape)))

    notes.append(f"broker: {identify_broker(p.url)[1]}")
    run_opts = RunOptions(**{**opts.run.__dict__, "label": label})
    result = await run_load(p.settings, spec, opts.images, run_opts, measuring)
    result.resources = sampler.result
    result.notes.extend(notes)
    result.summary["prefix"] = p.settings.streams.prefix
    result.summary["batch_means"] = batches
    result.round = round_no
    return result


async def run_one(base: Settings, url: str, opts: CompareOptions, round_no: int = 1) -> RunResult:
    """One broker's run: stages up, load, stages down, streams deleted (unless kept or external)."""
    label = broker_label(url) + (f" #{round_no}" if opts.rounds > 1 else "")
    async with pipeline(base, url, opts) as p:
        result = await measure(p, opts, opts.spec, label, round_no)
    result.notes.extend(p.notes)
    return result


async def compare(base: Settings, opts: CompareOptions) -> list[RunResult]:
    """Run every broker in order; a broker that fails is reported, the others still run."""
    results: list[RunResult] = []
    failures: list[tuple[int, str, BaseException]] = []
    for i, (round_no, url) in enumerate(run_order(opts.brokers, opts.rounds)):
        if i:
            await asyncio.sleep(SETTLE_S)
        try:
            results.append(await run_one(base, url, opts, round_no))
        except Exception as exc:  # one broker down must not cost the user the other broker's numbers
            failures.append((round_no, url, exc))
    if failures and not results:
        _, first_url, first_exc = failures[0]
        raise RuntimeError(f"every broker failed; first: {first_url}: {first_exc}") from first_exc
    for failed_round, failed_url, error in failures:
        failed = failed_result(failed_url, opts.spec, error)
        failed.round = failed_round
        results.append(failed)
    return results


def failed_result(url: str, spec: LoadSpec, exc: BaseException) -> RunResult:
    return RunResult(url, spec, {"error": f"{type(exc).__name__}: {exc}"}, 0, 0.0, notes=[f"run failed: {exc}"])
