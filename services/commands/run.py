"""``visionpipe run IMAGES...``: the whole pipeline in one process, the first thing a new user tries.

This module is the command. It checks what it was given — the paths, video files among them, the broker's
URL and that the broker answers, the port of ``--serve`` — in seconds, before importing torch and loading
the models, and its exit code says whether anything went through. ``run_images.py`` does the run,
``summary.py`` prints what was found, ``run_serve.py`` serves every stage and the gateway's page.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from visionpipe.logs import setup_logging
from visionpipe.samples import shipped_samples
from visionpipe.services.commands.preflight import GATEWAY, check_broker_url, check_port, connect_or_explain, role_port
from visionpipe.services.commands.serve import cli_settings
from visionpipe.services.models.registry import WeightsUnavailable
from visionpipe.settings import Settings

if TYPE_CHECKING:
    from visionpipe.services.commands.run_images import RunSummary

# Exit codes beyond click's own (0 done, 1 an error said in one line, 2 bad arguments).
EXIT_NO_IMAGES = 3
EXIT_NOTHING_WENT_THROUGH = 4
EXIT_CODES = """\b
Exit codes:
  0  at least one image went through (bad ones are listed with their reasons)
  1  could not start: broker URL or address, port in use, models missing
  2  bad arguments: a path that does not exist, a video file (use visionpipe ingest)
  3  no images in what was named (an empty folder)
  4  no image went through: every one was bad
"""
# Files `visionpipe ingest` reads and `run` does not: a video is many frames, not one bad image.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp"}
)


def walk(paths: Sequence[Path]) -> Iterator[Path]:
    """Files named, and every file under directories named, in sorted order; hidden files skipped in walks."""
    for p in paths:
        if p.is_dir():
            yield from sorted(
                f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts)
            )
        else:
            yield p


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def isolated(settings: Settings) -> Settings:
    """A copy whose streams (and memory store) belong to this run alone, so runs never see each other's messages."""
    tag = uuid.uuid4().hex[:8]
    url = f"memory://run-{tag}" if settings.broker.url.startswith("memory://") else settings.broker.url
    streams = settings.streams.model_copy(update={"prefix": f"{settings.streams.prefix}-run-{tag}"})
    return settings.model_copy(update={"broker": settings.broker.model_copy(update={"url": url}), "streams": streams})


def _images(named: tuple[Path, ...], console: Console) -> list[Path]:
    """The images to run: videos named are refused with the command that takes them; videos in folders are left out."""
    videos = [p for p in named if not p.is_dir() and is_video(p)]
    if videos:
        shown = " ".join(str(v) for v in videos)
        raise click.UsageError(
            f"{shown}: a video; `visionpipe run` takes images. For videos: visionpipe ingest {shown} --until-done "
            "--results results.jsonl"
        )
    found = list(walk(named))
    skipped = [p for p in found if is_video(p)]
    if skipped:
        console.print(f"left out {len(skipped)} video file(s), e.g. {skipped[0]}: use `visionpipe ingest` for videos")
    return [p for p in found if not is_video(p)]


async def _run(
    paths: list[Path], settings: Settings, out: Path, console: Console | None, elsewhere: bool = False
) -> RunSummary:
    """``elsewhere``: the stages run as ``visionpipe serve`` on this broker and stream prefix (nothing isolated)."""
    settings = settings if elsewhere else isolated(settings)
    broker = await connect_or_explain(settings)  # a broker that does not answer is said before torch loads
    try:
        from visionpipe.services.commands.run_images import run_pipeline
    except BaseException:
        await broker.close()
        raise
    return await run_pipeline(paths, settings, out, broker, console, elsewhere)


@click.command(epilog=EXIT_CODES)
@click.argument("images", nargs=-1, type=click.Path(exists=True, path_type=Path))
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
@click.option("--score-threshold", type=float, help="detector score threshold (default 0.43, README; 0: the top boxes)")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), help="also write the summary as JSON")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option(
    "--stages-elsewhere",
    is_flag=True,
    help="submit and collect only: the stages run as `visionpipe serve` on this --broker and stream prefix",
)
@click.option("--serve", is_flag=True, help="instead of IMAGES: serve every stage plus the HTTP gateway and its page")
@click.option("--port", type=int, help="--serve: the gateway's port (default 8000; 0: any free one)")
@click.option(
    "--deadline-ms",
    type=click.FloatRange(min=1.0),
    help="each image's deadline from its submission: a stage that cannot make it answers deadline_exceeded",
)
@click.pass_context
def run(
    ctx: click.Context,
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
    stages_elsewhere: bool,
    serve: bool,
    port: int | None,
    deadline_ms: float | None,
) -> None:
    """Run decode -> detector -> classifier over IMAGES (files or directories; default: the shipped samples)."""
    settings = cli_settings(settings_file, broker, device, weights, detector, classifier, port=port)
    if score_threshold is not None:
        settings.detector.score_threshold = score_threshold
    if deadline_ms is not None:
        settings.limits.default_deadline_ms = deadline_ms
    setup_logging("WARNING" if settings.service.log_level.upper() == "INFO" else settings.service.log_level)
    check_broker_url(settings)
    console = Console(stderr=True)
    if serve:
        _serve(images, role_port(settings, GATEWAY))
        return
    paths = _images(images, console) if images else shipped_samples()
    if not images:
        console.print(f"no IMAGES given: running the {len(paths)} shipped samples")
    if not paths:
        console.print(f"no images in {' '.join(map(str, images))}: nothing to run")
        ctx.exit(EXIT_NO_IMAGES)
    try:
        summary = asyncio.run(_run(paths, settings, out, None if quiet else console, stages_elsewhere))
    except WeightsUnavailable as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    from visionpipe.services.commands.summary import print_summary

    print_summary(summary, out, Console())
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    if summary.ok == 0:
        late = f" ({summary.deadline_exceeded} of them out of time)" if summary.deadline_exceeded else ""
        console.print(f"no image went through: all {summary.bad} were bad{late} (reasons above, and in {out})")
        ctx.exit(EXIT_NOTHING_WENT_THROUGH)


def _serve(images: tuple[Path, ...], settings: Settings) -> None:
    if images:
        raise click.UsageError("--serve takes no IMAGES: it serves a page and an API to send them to")
    check_port(settings.service.host, settings.service.port, "the gateway")
    import uvloop

    from visionpipe.services.commands.run_serve import serve_locally

    uvloop.run(serve_locally(settings, Console()))
