"""The summary table ``visionpipe run`` prints: throughput, latency, where the time went, bad inputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from visionpipe.breakdown import CATEGORIES
from visionpipe.services.models.loading import RANDOM

if TYPE_CHECKING:
    from visionpipe.services.commands.run import RunSummary


def print_summary(s: RunSummary, out: Path, console: Console) -> None:
    table = Table(title="visionpipe run", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("inputs", f"{s.inputs}  ({s.ok} ok, {s.bad} bad)")
    table.add_row("throughput", f"{s.images_per_s:.2f} images/s  ({s.ok} in {s.elapsed_s:.2f} s)")
    table.add_row("latency p50 / p99", f"{s.split.percentile(50) * 1e3:.1f} ms / {s.split.percentile(99) * 1e3:.1f} ms")
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

    if s.errors:
        bad = Table(title="bad inputs", title_justify="left")
        bad.add_column("reason")
        bad.add_column("count", justify="right")
        for reason, count in sorted(s.errors.items(), key=lambda kv: -kv[1]):
            bad.add_row(reason, str(count))
        console.print(bad)
    console.print(f"results: {out}")
