"""What ``visionpipe run`` prints at the end: what was found, which files were bad and why, then how fast.

A few images get a line each (file, objects, how each object reads); many get a count per label, since a
thousand lines scroll away. Latency percentiles need samples: with fewer than a hundred, "p99" would only be
the slowest one, and the table says so instead of printing a figure that looks like more than it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from visionpipe.breakdown import CATEGORIES
from visionpipe.services.models.loading import RANDOM

if TYPE_CHECKING:
    from visionpipe.services.commands.run_images import RunSummary

# Up to this many images, one line each; above it, a count per label.
FEW_IMAGES = 20
# Objects shown per image (the rest are counted): a line stays readable.
OBJECTS_SHOWN = 4
# Bad files named one by one (the rest are counted; every one is in results.jsonl).
BAD_SHOWN = 20
# Below this many samples a 99th percentile is just the slowest one.
P99_SAMPLES = 100


def print_summary(s: RunSummary, out: Path, console: Console) -> None:
    _found(s, console)
    _bad(s, console)
    table = Table(title="visionpipe run", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("inputs", f"{s.inputs}  ({s.ok} ok, {s.bad} bad)")
    table.add_row("throughput", f"{s.images_per_s:.2f} images/s  ({s.ok} in {s.elapsed_s:.2f} s)")
    table.add_row(*latency_row(s))
    table.add_row("start-up", f"{s.startup_s:.1f} s (models, warm-up; not in throughput)")
    if s.deadline_ms is not None:
        table.add_row(
            "deadline",
            f"{s.deadline_ms:g} ms: {s.ok - s.late} results in time, {s.late} late, "
            f"{s.deadline_exceeded} answered deadline_exceeded",
        )
    table.add_row("device / decoder / broker", f"{s.device} / {s.decoder} / {s.broker}")
    for stage, weights in s.weights.items():
        shown = "[bold red]RANDOM weights: outputs are meaningless[/]" if weights == RANDOM else weights
        table.add_row(f"{stage} weights", shown)
    console.print(table)

    split = Table(title="share of time per request", title_justify="left")
    split.add_column("part")
    split.add_column("share", justify="right")
    split.add_column("mean ms/request", justify="right")
    mean = s.split.mean_ms()
    for part in CATEGORIES:
        split.add_row(part, f"{s.split.share[part] * 100:.1f}%", f"{mean[part]:.1f}")
    console.print(split)
    floor = s.split.hop_floor_s * 1e3
    console.print(f"broker hops: {floor:.1f} ms/request at the fastest, the rest is waiting in streams")
    _print_cores(s, console)
    console.print(f"results: {out}")


def _print_cores(s: RunSummary, console: Console) -> None:
    """How the cores were shared: each stage's instances and threads, and its busy share of the cores."""
    if not s.cores:
        return
    table = Table(title=f"how the {s.cores['cores']} cores were shared", title_justify="left")
    for column in ("stage", "instances × threads", "on", "busy share of the cores"):
        table.add_column(column, justify="left" if column in ("stage", "on") else "right")
    for stage, info in s.cores["stages"].items():
        busy, batch = info.get("busy_share"), info.get("mean_batch")
        table.add_row(
            stage,
            f"{info['instances']} × {info['threads']}" + (f", batches of {batch}" if batch else ""),
            ", ".join(info.get("devices", ())),
            "" if busy is None else f"{busy * 100:.0f}%",
        )
    console.print(table)
    t = s.threads
    if t:
        console.print(
            f"threads: {t['running']} of {t['threads']} ran; {t['cores_used']:.2f} cores busy on average, "
            f"{t['runnable_mean']:.1f} runnable at a time (at most {t['runnable_max']}) on {t['cores']} cores"
        )
    if s.ok:
        console.print(f"bytes copied between stages: {s.copied_bytes / s.ok / 1e3:.0f} kB/image")


def latency_row(s: RunSummary) -> tuple[str, str]:
    n = len(s.split.totals)
    p50, p99 = s.split.percentile(50) * 1e3, s.split.percentile(99) * 1e3
    if n == 0:
        return "latency", "none measured"
    if n == 1:
        return "latency", f"{p50:.1f} ms (one image: no percentiles)"
    if n < P99_SAMPLES:
        return "latency p50 / slowest", f"{p50:.1f} ms / {p99:.1f} ms  ({n} images: too few for a p99)"
    return "latency p50 / p99", f"{p50:.1f} ms / {p99:.1f} ms  ({n} images)"


def _found(s: RunSummary, console: Console) -> None:
    if not s.found:
        return
    if len(s.found) <= FEW_IMAGES:
        table = Table(title="found", title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("objects", justify="right")
        table.add_column("what: detector label, score · classifier's guess")
        for name, count, captions in s.found:
            more = f", +{count - OBJECTS_SHOWN} more" if count > OBJECTS_SHOWN else ""
            table.add_row(name, str(count), ", ".join(captions[:OBJECTS_SHOWN]) + more or "nothing")
        console.print(table)
        return
    table = Table(title=f"found in {len(s.found)} images", title_justify="left")
    table.add_column("label")
    table.add_column("objects", justify="right")
    for label, count in s.labels.most_common():
        table.add_row(label, str(count))
    empty = sum(1 for _, count, _ in s.found if count == 0)
    console.print(table)
    console.print(f"{empty} of {len(s.found)} images had no object above the score threshold")


def _bad(s: RunSummary, console: Console) -> None:
    if not s.bad_files:
        return
    table = Table(title=f"bad inputs: {len(s.bad_files)}", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("why")
    for name, reason in s.bad_files[:BAD_SHOWN]:
        table.add_row(name, reason)
    console.print(table)
    if len(s.bad_files) > BAD_SHOWN:
        console.print(f"… and {len(s.bad_files) - BAD_SHOWN} more, each with its reason in the results file")
