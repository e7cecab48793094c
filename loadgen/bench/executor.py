"""``visionpipe bench executor``: batching policies and mechanics side by side, written to JSON and a PNG.

``--device sim`` runs the discrete-event simulation with a cost model
(deterministic, a few minutes on a laptop core); ``--device cpu|cuda`` runs
the real asyncio executor on a torchvision model with random weights (short
open-loop traces in real time: noisy on a shared machine, so ratios only).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from visionpipe.executor.sim_device import cost_model
from visionpipe.loadgen.bench.suite import Suite, adaptive_vs_greedy, configs
from visionpipe.loadgen.bench.targets import evaluate, met_label

# Per cost model: (SLO ms, max batch). H100 ResNet-50: b256 takes 18.5 ms, so 50 ms leaves room for one
# batch filling while another computes; the 1080 Ti is ~15x slower per image, so b64 and 200 ms.
SIM_DEFAULTS = {"h100": (50.0, 256), "h100-uint8": (50.0, 256), "h100-graphs": (50.0, 256), "gtx1080ti": (200.0, 64)}


@click.command("executor")
@click.option("--device", type=click.Choice(["sim", "cpu", "cuda"]), default="sim", show_default=True)
@click.option(
    "--cost", "cost_name", default="h100", show_default=True, help="sim: h100, h100-uint8, h100-graphs or gtx1080ti"
)
@click.option(
    "--model",
    default=None,
    help="cpu/cuda: a torchvision classifier (default resnet50 on cuda, "
    "mobilenet_v3_small on cpu), or detector / classifier: that stage's own function; "
    "random weights",
)
@click.option("--slo-ms", type=float, default=None, help="latency SLO (default per cost model / device)")
@click.option("--max-batch", type=int, default=None)
@click.option("--duration", type=float, default=None, help="seconds per trace (sim default 2, live 3)")
@click.option("--noise", type=float, default=0.03, show_default=True, help="sim: relative jitter of phase times")
@click.option("--image-size", type=int, default=None, help="cpu/cuda: input side (default 224 cuda, 96 cpu)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="fewer swept baseline points (smoke runs)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="sim: the p99, batch-size and burst plots",
)
def bench_executor(
    device: str,
    cost_name: str,
    model: str | None,
    slo_ms: float | None,
    max_batch: int | None,
    duration: float | None,
    noise: float,
    image_size: int | None,
    seed: int,
    quick: bool,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Every policy, overlapped and serial, on Poisson 10-100%, a 2x burst and a ramp; capacity at the SLO."""
    started = time.perf_counter()
    if device == "sim":
        doc = run_sim(cost_name, slo_ms, max_batch, duration or 2.0, noise, seed, quick, plot_path)
    else:
        from visionpipe.loadgen.bench.executor_live import run_live

        doc = run_live(device, model, slo_ms, max_batch, duration or 3.0, image_size, seed, quick)
    doc["meta"]["command"] = "visionpipe bench executor " + " ".join(sys.argv[3:] if len(sys.argv) > 3 else [])
    doc["meta"]["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(doc)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=1, default=_plain) + "\n")
        click.echo(f"wrote {json_path}")


def run_sim(
    cost_name: str,
    slo_ms: float | None,
    max_batch: int | None,
    duration: float,
    noise: float,
    seed: int,
    quick: bool,
    plot_path: Path | None,
) -> dict[str, Any]:
    cost = cost_model(cost_name, noise)
    default_slo, default_mb = SIM_DEFAULTS.get(cost_name, (50.0, 256))
    slo, mb = slo_ms or default_slo, max_batch or default_mb
    suite = Suite(cost, slo_ms=slo, max_batch=mb, duration_s=duration, seed=seed, quick=quick)
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for cfg in configs(mb, quick):
        r, s = suite.run_config(cfg)
        rows += r
        summary.append(s)
        click.echo(f"  {cfg.policy:8s} {s['params']:28s} {cfg.mechanics:15s} capacity={s['capacity']:9.1f}/s", err=True)
    compute_ms = max(cost.compute.ms(mb), cost.launch.ms(mb))
    lead_share = (cost.stage.ms(mb) + cost.upload.ms(mb)) / compute_ms
    pageable_share = (cost.stage.ms(mb) + cost.upload_pageable.ms(mb)) / compute_ms
    meta = {
        "device": f"sim ({cost_name} cost model, noise cv {noise})",
        "machine": "discrete-event simulation (virtual clock)",
        "slo_ms": slo,
        "max_batch": mb,
        "duration_s": duration,
        "seed": seed,
        "ideal_capacity": round(suite.ref, 1),
        "staging_and_pageable_upload_share_of_compute": round(pageable_share, 3),
        "staging_and_pinned_upload_share_of_compute": round(lead_share, 3),
        "launch_ms_per_batch": cost.launch.ms(1),
    }
    targets = evaluate(rows, summary, lead_share=lead_share, pageable_share=pageable_share, slo_ms=slo, raw=suite.ref)
    if plot_path:
        from visionpipe.loadgen.plots import plot_executor

        title = f"executor policies, sim {cost_name}, SLO {slo:g} ms, max batch {mb}"
        plot_executor(plot_path, title, rows, summary, slo, suite.burst_runs, suite.burst.window_s)
    return {
        "meta": meta,
        "rows": rows,
        "summary": summary,
        "targets": targets,
        "adaptive_vs_greedy": adaptive_vs_greedy(rows),
    }


def _plain(obj: Any) -> Any:
    """numpy scalars to Python numbers for json."""
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title=f"capacity at p99 <= SLO ({doc['meta']['device']})")
    for col in ("policy", "params", "mechanics", "capacity"):
        table.add_column(col)
    for s in sorted(doc["summary"], key=lambda s: -s["capacity"])[:16]:
        table.add_row(s["policy"], s["params"], s["mechanics"], f"{s['capacity']:.1f}")
    console.print(table)
    targets = Table(title="executor targets")
    for col in ("target", "value", "threshold", "met"):
        targets.add_column(col)
    for t in doc.get("targets", []):
        targets.add_row(t["target"], str(t["value"]), f"{t['op']} {t['threshold']}", met_label(t["met"]))
    console.print(targets)
