"""What ``visionpipe run`` reports: throughput, latency, where the time went, how the cores were shared, bad inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from visionpipe.breakdown import CATEGORIES, Split
from visionpipe.services.models.loading import RANDOM


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
    # How the cores were shared: per stage its instances, threads each, devices and busy share of the cores.
    cores: dict[str, Any] = field(default_factory=dict)
    threads: dict[str, Any] = field(default_factory=dict)  # visionpipe.threads.ThreadCensus over the run
    copied_bytes: int = 0  # envelope bytes encoded and decoded while the images went through

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
            "cores": self.cores,
            "threads": self.threads,
            "copied_bytes_per_image": round(self.copied_bytes / self.ok) if self.ok else None,
        }


def print_summary(s: RunSummary, out: Path, console: Console) -> None:
    table = Table(title="visionpipe run", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("inputs", f"{s.inputs}  ({s.ok} ok, {s.bad} bad)")
    table.add_row("throughput", f"{s.images_per_s:.2f} images/s  ({s.ok} in {s.elapsed_s:.2f} s)")
    table.add_row("latency p50 / p99", f"{s.split.percentile(50) * 1e3:.1f} ms / {s.split.percentile(99) * 1e3:.1f} ms")
    table.add_row("start-up", f"{s.startup_s:.1f} s (models, warm-up; not in throughput)")
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

    if s.errors:
        bad = Table(title="bad inputs", title_justify="left")
        bad.add_column("reason")
        bad.add_column("count", justify="right")
        for reason, count in sorted(s.errors.items(), key=lambda kv: -kv[1]):
            bad.add_row(reason, str(count))
        console.print(bad)
    console.print(f"results: {out}")


def _print_cores(s: RunSummary, console: Console) -> None:
    """How the cores were shared: each stage's instances and threads, and its busy share of the cores."""
    if not s.cores:
        return
    table = Table(title=f"how the {s.cores['cores']} cores were shared", title_justify="left")
    for column in ("stage", "instances × threads", "on", "busy share of the cores"):
        table.add_column(column, justify="left" if column in ("stage", "on") else "right")
    for stage, info in s.cores["stages"].items():
        busy = info.get("busy_share")
        table.add_row(
            stage,
            f"{info['instances']} × {info['threads']}"
            + (f", batches of {info['mean_batch']}" if "mean_batch" in info else ""),
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
