"""``visionpipe loadgen``: run load against the pipeline, compare brokers.

``run`` and ``compare`` take the same load options and share one code path:
``run`` is a comparison of one broker that by default drives stages already
running (``--external``); ``compare`` by default starts the three stages
itself for each broker (``--spawn``). Both exit non-zero when a result was
lost or duplicated, since either breaks the pipeline's delivery contract.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from visionpipe.loadgen.compare import CompareOptions, compare
from visionpipe.loadgen.payloads import ImageSet, from_folder, parse_size, synthetic
from visionpipe.loadgen.runner import RunOptions, RunResult
from visionpipe.loadgen.schedule import PATTERNS, LoadSpec, ScheduleError
from visionpipe.loadgen.stages import StageOptions
from visionpipe.settings import load_settings

EXIT_LOST = 3  # results lost or duplicated: apart from 1 (errors) and 2 (click usage errors)


@click.group()
def loadgen() -> None:
    """Drive the pipeline with load and compare brokers (open loop: latency from scheduled send times)."""


# What load to offer, and for how long.
LOAD_SHAPE_OPTIONS = [
    click.option("--pattern", type=click.Choice(PATTERNS), default="constant", show_default=True),
    click.option(
        "--rate",
        type=float,
        default=10.0,
        show_default=True,
        help="requests/s (base rate for burst, final rate for ramp)",
    ),
    click.option("--burst-factor", type=float, default=2.0, show_default=True),
    click.option("--burst-ms", type=float, default=300.0, show_default=True, help="burst length each second"),
    click.option("--concurrency", type=int, default=4, show_default=True, help="requests in flight (closed)"),
    click.option("--duration", type=float, default=10.0, show_default=True, help="seconds of sending"),
    click.option("--seed", type=int, default=0, show_default=True, help="Poisson arrivals and synthetic images"),
]
# What to send.
IMAGE_OPTIONS = [
    click.option(
        "--images",
        "images_dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="folder of images to send in rotation",
    ),
    click.option("--synthetic", "synthetic_size", default=None, help="WxH: send generated JPEGs (default 640x480)"),
]
# How the run is measured and what counts as lost.
MEASURING_OPTIONS = [
    click.option("--warmup", type=int, default=4, show_default=True, help="requests awaited before measuring"),
    click.option(
        "--drain-timeout",
        type=float,
        default=30.0,
        show_default=True,
        help="after the last send, seconds without any result before the missing ones count as lost",
    ),
    click.option(
        "--backpressure-wait",
        type=float,
        default=10.0,
        show_default=True,
        help="seconds a send may wait at the ingress watermark before it counts as rejected",
    ),
    click.option(
        "--deadline-ms",
        type=click.FloatRange(min=1.0),
        default=None,
        help="each request's deadline, ms from its scheduled send; counts deadline_exceeded answers and late results",
    ),
]
# The stages a run starts itself.
STAGE_OPTIONS = [
    click.option("--device", default="cpu", show_default=True, help="passed to the stages it starts"),
    click.option(
        "--weights",
        default="DEFAULT",
        show_default=True,
        help="passed to the stages it starts: the bundled models (DEFAULT), random, a file or a torchvision name",
    ),
    click.option(
        "--stage-env",
        multiple=True,
        metavar="KEY=VALUE",
        help="setting for the stages it starts, e.g. VISIONPIPE_DETECTOR__SCORE_THRESHOLD=0 (repeatable)",
    ),
    click.option(
        "--stage-command",
        default=None,
        help="command before the stage name, instead of `visionpipe serve` (shell words)",
    ),
]
# The comparison and its report.
REPORT_OPTIONS = [
    click.option(
        "--rounds",
        type=click.IntRange(1, 20),
        default=1,
        show_default=True,
        help="repeat the comparison in ABBA order; the verdict takes each broker's median",
    ),
    click.option("--keep", is_flag=True, help="keep the run's streams/topics instead of deleting them"),
    click.option(
        "--out",
        "out_dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="folder for report.md, results.json and plots",
    ),
    click.option("--progress/--no-progress", default=True, show_default=True),
    click.option(
        "--strict/--no-strict",
        default=True,
        show_default=True,
        help=f"exit {EXIT_LOST} when any result is lost or duplicated",
    ),
]


def load_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every option of ``loadgen run`` and ``compare``, in the order ``--help`` lists them."""
    options = [*LOAD_SHAPE_OPTIONS, *IMAGE_OPTIONS, *MEASURING_OPTIONS, *STAGE_OPTIONS, *REPORT_OPTIONS]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(options), f)


def _images(images_dir: Path | None, size: str | None, seed: int) -> ImageSet:
    if images_dir is not None and size is not None:
        raise click.UsageError("give --images or --synthetic, not both")
    if images_dir is not None:
        return from_folder(images_dir)
    width, height = parse_size(size or "640x480")
    return synthetic(width, height, seed=seed)


def _load(kw: dict[str, Any]) -> tuple[LoadSpec, ImageSet]:
    """The load and the images the shared options describe; a bad value is a usage error, not a traceback."""
    spec = LoadSpec(
        kw["pattern"], kw["rate"], kw["duration"], kw["burst_factor"], kw["burst_ms"], kw["concurrency"], kw["seed"]
    )
    try:
        spec.validate()
        return spec, _images(kw["images_dir"], kw["synthetic_size"], kw["seed"])
    except (ScheduleError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def _stage_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("VISIONPIPE_"):
            raise click.UsageError(f"--stage-env {pair!r}: expected VISIONPIPE_SECTION__FIELD=VALUE")
        env[key] = value
    return env


def _execute(brokers: list[str], external: bool, out_dir: Path, kw: dict[str, Any], capacity: bool = False) -> None:
    spec, images = _load(kw)
    opts = CompareOptions(
        brokers=brokers,
        spec=spec,
        images=images,
        out_dir=out_dir,
        external=external,
        keep=kw["keep"],
        rounds=kw["rounds"],
        run=RunOptions(
            drain_timeout_s=kw["drain_timeout"],
            backpressure_wait_s=kw["backpressure_wait"],
            warmup_requests=kw["warmup"],
            progress=kw["progress"],
            deadline_ms=kw["deadline_ms"],
        ),
        stages=StageOptions(
            device=kw["device"],
            weights=kw["weights"],
            env=_stage_env(kw["stage_env"]),
            command=shlex.split(kw["stage_command"]) if kw["stage_command"] else None,
        ),
    )
    base = load_settings(streams={"prefix": kw.get("prefix")})
    load_before = os.getloadavg()[0]
    found: dict[str, Any] | None = None
    if capacity:
        from visionpipe.loadgen.capacity import find_capacity

        results, found = asyncio.run(find_capacity(base, opts))
    else:
        results = asyncio.run(compare(base, opts))
    from visionpipe.loadgen.report import write_report  # matplotlib only once there is something to plot

    setup = {
        "load": spec.describe(),
        "images": f"{images.description}, mean {images.mean_bytes / 1024:.1f} KB",
        "stages": "external (already running)"
        if external
        else f"started per broker: device {kw['device']}, weights {kw['weights']}"
        + (f", {' '.join(kw['stage_env'])}" if kw["stage_env"] else ""),
        "warm-up requests": kw["warmup"],
        # Other work on the host moves every figure of a comparison: the reader should know how busy it was.
        "host load average (1 min), before → after": f"{load_before:.1f} → {os.getloadavg()[0]:.1f}",
    }
    paths = write_report(results, out_dir, setup, found)
    console = Console()
    console.print(summary_table(results))
    _say_verdict(console, json.loads(paths["json"].read_text()))
    console.print(f"report: {paths['markdown']}  data: {paths['json']}")
    if kw["strict"] and any(
        r.summary.get("lost", 0) or r.summary.get("duplicates", 0) or "error" in r.summary for r in results
    ):
        raise SystemExit(EXIT_LOST)


def _say_verdict(console: Console, doc: dict[str, Any]) -> None:
    """Saturation first, then capacity, then the ranking the report makes (if it makes one)."""
    for label, info in doc["saturated"].items():
        console.print(f"[bold red]saturated, not ranked[/]: {label}: {info['why']}")
    if doc["saturated"]:
        console.print("lower --rate, or use --find-capacity to compare each broker at a rate it keeps up with")
    for v in doc["verdict"]:
        if v["winner"] is None:
            console.print(f"{v['metric']}: about the same ({v['ratio']:.2f}×)")
        elif v["ratio"]:
            console.print(f"{v['metric']}: {v['winner']} better, {v['ratio']:.2f}×")


def _percentile_cell(p: str) -> Callable[[dict[str, Any]], str]:
    return lambda s: f"{s.get('latency_ms', {}).get(p, float('nan')):.1f}"


def summary_table(results: list[RunResult]) -> Table:
    from visionpipe.loadgen.compare import broker_label

    first_seen = {url: i for i, url in reversed(list(enumerate(r.broker for r in results)))}
    results = sorted(results, key=lambda r: (first_seen[r.broker], r.round))
    table = Table(title="load run")
    table.add_column("")
    rounds = max((r.round for r in results), default=1)
    for r in results:
        table.add_column(broker_label(r.broker) + (f" #{r.round}" if rounds > 1 else ""), justify="right")
    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("sent / completed", lambda s: f"{s.get('sent')} / {s.get('completed')}"),
        ("lost / dup / failed", lambda s: f"{s.get('lost')} / {s.get('duplicates')} / {s.get('failed')}"),
        ("throughput req/s", lambda s: f"{s.get('throughput_rps', 0):.1f}"),
        *[(f"{p} ms", _percentile_cell(p)) for p in ("p50", "p90", "p99", "p99.9", "max")],
        ("non-DNN share", lambda s: f"{(s.get('non_dnn_share') or 0) * 100:.0f} %"),
        ("deadline exceeded / late", lambda s: f"{s.get('deadline_exceeded', 0)} / {s.get('late', 0)}"),
    ]
    for name, get in rows:
        table.add_row(name, *(get(r.summary) if "error" not in r.summary else "failed" for r in results))
    return table


def _execute_http(target: str, token: str | None, kw: dict[str, Any]) -> None:
    """``--target``: the same load through the HTTP gateway; the report counts every answer by status."""
    from visionpipe.loadgen.http_target import HttpOptions, run_http_load

    spec, images = _load(kw)
    opts = HttpOptions(warmup_requests=kw["warmup"], token=token, deadline_ms=kw["deadline_ms"])
    summary = asyncio.run(run_http_load(target, spec, images, opts))
    table = Table(title=f"load through {target}: {spec.describe()}")
    table.add_column("")
    table.add_column("value", justify="right")
    lat = summary["latency_ms"]
    for name, value in [
        ("sent / completed (200)", f"{summary['sent']} / {summary['completed']}"),
        (
            "429 (backpressure) / 5xx / transport errors / lost",
            f"{summary['rejected_429']} / {summary['server_errors_5xx']} / {summary['transport_errors']} / "
            f"{summary['lost']}",
        ),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(summary["statuses"].items()))),
        (
            "deadline: 504 exceeded / 429 refused / late 200s",
            f"{summary['deadline_exceeded']} / {summary['deadline_infeasible']} / {summary['late']}",
        ),
        ("throughput req/s", f"{summary['throughput_rps']:.1f}"),
        *[(f"{p} ms (200s)", f"{lat.get(p, float('nan')):.2f}") for p in ("p50", "p90", "p99", "max")],
    ]:
        table.add_row(name, value)
    Console().print(table)
    if kw["out_dir"] is not None:
        kw["out_dir"].mkdir(parents=True, exist_ok=True)
        doc = {"target": target, "load": spec.describe(), "images": images.description, "summary": summary}
        (kw["out_dir"] / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    if kw["strict"] and summary["lost"]:
        raise SystemExit(EXIT_LOST)


@loadgen.command()
@click.option("--broker", "broker_url", default=None, help="broker URL (default: VISIONPIPE_BROKER__URL)")
@click.option(
    "--target", default=None, help="http://host:port of a gateway (or oip+http://…, oip+grpc://…): load it instead"
)
@click.option("--token", default=None, envvar="LOADGEN_TOKEN", help="bearer token for --target")
@click.option(
    "--external/--spawn",
    default=True,
    show_default=True,
    help="drive stages already running, or start the three stages for this run",
)
@click.option("--prefix", default=None, help="stream prefix of the running pipeline (external; default: settings)")
@load_options
def run(broker_url: str | None, target: str | None, token: str | None, external: bool, **kw: Any) -> None:
    """Offer load to the pipeline on one broker, or through the gateway (--target); print and write the report."""
    if target is not None:
        _execute_http(target, token, kw)
        return
    url = broker_url or load_settings().broker.url
    if url.startswith("memory://"):
        raise click.UsageError("memory:// lives inside one process; give a redis:// or kafka:// broker")
    _execute([url], external, kw["out_dir"] or Path("loadgen-run"), kw)


@loadgen.command(name="compare")
@click.option("--brokers", required=True, help="comma-separated broker URLs, e.g. redis://…,kafka://…")
@click.option(
    "--external/--spawn",
    default=False,
    show_default=True,
    help="use stages already running (compose, Kubernetes) instead of starting them per broker",
)
@click.option("--prefix", default=None, help="stream prefix of the running pipeline (external only)")
@click.option(
    "--find-capacity",
    is_flag=True,
    help="per broker, step the rate from --rate (x1.5 up, or down) to the most it keeps up with; compare there",
)
@load_options
def compare_cmd(brokers: str, external: bool, find_capacity: bool, **kw: Any) -> None:
    """Run the same load over each broker back to back; write report.md, results.json and plots.

    A run the pipeline cannot keep up with (completing far less than offered, latency growing) is said at the
    top of the report and not ranked: its latencies measure a queue. --find-capacity finds each broker's
    capacity first and compares the brokers at a rate every one keeps up with.
    """
    if find_capacity and kw["rounds"] > 1:
        raise click.UsageError("--find-capacity steps each broker once; --rounds does not apply")
    urls = [u.strip() for u in brokers.split(",") if u.strip()]
    if not urls:
        raise click.UsageError("--brokers needs at least one URL")
    if any(u.startswith("memory://") for u in urls):
        raise click.UsageError("memory:// lives inside one process; compare redis:// and kafka:// brokers")
    _execute(urls, external, kw["out_dir"] or Path("loadgen-compare"), kw, capacity=find_capacity)
