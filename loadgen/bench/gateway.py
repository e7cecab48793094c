"""``visionpipe bench gateway``: what the gateway adds over submitting to the broker directly, through each of its
doors (native HTTP, the Open Inference Protocol over HTTP in its binary layout, and over gRPC), and how many
requests per second each sustains.

One pipeline (the stages named by ``--stage-command``; a pass-through set measures what lies around the models)
and one ``visionpipe serve gateway`` on the same broker and stream prefix serve every mode, so the only
difference between them is the path in: ``broker`` publishes to the frames stream and reads the results stream
(``loadgen run``), ``http`` posts to ``/v1/detect`` and reads the answer (``loadgen run --target``), ``oip-http``
and ``oip-grpc`` send the protocol's infer request (``--target oip+http://…``, ``oip+grpc://…``). All are open
loop at the same rate, latency from each request's scheduled send; the order of the modes turns every two rounds
and runs backwards on odd ones, so the box's changing load falls on all of them. Throughput is a closed loop of
N clients in each mode, with the gateway's own CPU time per request (psutil) beside it: on a shared box that is
steadier than a rate. Every point records the 1-minute load average.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import shlex
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import click
import psutil
from PIL import Image

from visionpipe.loadgen.http_target import HttpOptions, run_http_load
from visionpipe.loadgen.payloads import ImageSet
from visionpipe.loadgen.runner import RunOptions, run_load
from visionpipe.loadgen.schedule import LoadSpec
from visionpipe.loadgen.stages import StageOptions, StageSet, default_command, free_port
from visionpipe.settings import load_settings

READY_TIMEOUT_S = 60.0
# 150 KB frames: a 1280x720 JPEG of a busy scene at quality 85.
TARGET_BYTES = 150_000
IMAGES = 8
# Noise in blocks of this many pixels: at quality ~85 a 1280x720 frame then weighs about as much as a busy photo.
NOISE_BLOCK = 6


def sized_jpegs(target: int = TARGET_BYTES, count: int = IMAGES, seed: int = 0) -> ImageSet:
    """JPEGs of about ``target`` bytes: blocky noise (compresses like a busy photo) at 1280x720."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = (1280 // NOISE_BLOCK, 720 // NOISE_BLOCK)
        small = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
        img = small.resize((1280, 720), Image.Resampling.NEAREST)
        quality = 90
        while True:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
            if buf.tell() <= target * 1.05 or quality <= 20:
                break
            quality -= 5
        out.append(buf.getvalue())
    mean = sum(map(len, out)) / len(out)
    return ImageSet(tuple(out), f"{count} JPEGs 1280x720, mean {mean / 1024:.0f} KiB")


def load1() -> float:
    return os.getloadavg()[0]


MODES = ("broker", "http", "oip-http", "oip-grpc")
GATEWAY_MODES = MODES[1:]


def round_order(modes: tuple[str, ...], r: int) -> tuple[str, ...]:
    """Round ``r``'s order: turned by one every two rounds, backwards on odd rounds (ABBA for two modes)."""
    k = (r // 2) % len(modes)
    turned = modes[k:] + modes[:k]
    return turned if r % 2 == 0 else tuple(reversed(turned))


class GatewayProcess:
    def __init__(self, broker: str, prefix: str, log: Path) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        env = {
            **os.environ,
            "VISIONPIPE_STREAMS__PREFIX": prefix,
            "VISIONPIPE_SERVICE__CONSUMER": f"bench{self.port}",
            "VISIONPIPE_GATEWAY__GRPC_PORT": str(self.grpc_port),
        }
        argv = [*default_command(), "gateway", "--broker", broker, "--port", str(self.port)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = {
            "http": self.url,
            "oip-http": "oip+" + self.url,
            "oip-grpc": f"oip+grpc://127.0.0.1:{self.grpc_port}",
        }
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gateway not ready: {log.read_text()[-2000:]}")

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def _point(
    mode: str, spec: LoadSpec, images: ImageSet, broker: str, prefix: str, gw: GatewayProcess
) -> dict[str, Any]:
    cpu0, load0 = gw.cpu_s(), load1()
    if mode in GATEWAY_MODES:
        s = await run_http_load(gw.targets[mode], spec, images, HttpOptions(warmup_requests=4))
        lat, done, extra = s["latency_ms"], s["completed"], {k: s[k] for k in ("statuses", "lost")}
    else:
        settings = load_settings(broker={"url": broker}, streams={"prefix": prefix})
        r = await run_load(settings, spec, images, RunOptions(progress=False, warmup_requests=4))
        lat, done, extra = (
            r.summary["latency_ms"],
            r.summary["completed"],
            {"lost": r.summary["lost"], "failed": r.summary["failed"]},
        )
    cpu = gw.cpu_s() - cpu0
    return {
        "mode": mode,
        "load": spec.describe(),
        "completed": done,
        **extra,
        "throughput_rps": round(done / spec.duration_s, 1),
        "p50_ms": round(lat.get("p50", float("nan")), 3),
        "p90_ms": round(lat.get("p90", float("nan")), 3),
        "p99_ms": round(lat.get("p99", float("nan")), 3),
        "gateway_cpu_ms_per_request": round(cpu * 1e3 / max(1, done), 3) if mode in GATEWAY_MODES else None,
        "load1": [round(load0, 2), round(load1(), 2)],
    }


async def _bench(
    broker: str,
    stage_command: str,
    rates: list[float],
    duration: float,
    rounds: int,
    concurrency: int,
    compute_scale: float,
    logdir: Path,
    modes: tuple[str, ...] = MODES,
) -> dict[str, Any]:
    prefix = f"gwb{uuid.uuid4().hex[:6]}"
    images = sized_jpegs()
    opts = StageOptions(
        command=shlex.split(stage_command) if stage_command else None,
        env={"PASSTHROUGH_COMPUTE_SCALE": str(compute_scale)},
    )
    points: list[dict[str, Any]] = []
    with StageSet(broker, prefix, opts, logdir):
        gw = GatewayProcess(broker, prefix, logdir / "gateway.log")
        try:
            for r in range(rounds):
                order = round_order(modes, r)
                for rate in rates:
                    for mode in order:
                        spec = LoadSpec("poisson", rate=rate, duration_s=duration, seed=r)
                        points.append({"round": r + 1, **await _point(mode, spec, images, broker, prefix, gw)})
                        click.echo(json.dumps(points[-1]))
            for mode in (*modes, *reversed(modes)):
                spec = LoadSpec("closed", duration_s=duration, concurrency=concurrency)
                points.append({"round": "throughput", **await _point(mode, spec, images, broker, prefix, gw)})
                click.echo(json.dumps(points[-1]))
        finally:
            gw.stop()
    return {
        "images": images.description,
        "broker": broker,
        "stage_command": stage_command or "visionpipe serve",
        "compute_scale": compute_scale,
        "cpus": os.cpu_count(),
        "modes": list(modes),
        "points": points,
    }


def markdown(result: dict[str, Any]) -> str:
    """The points as a table, and per rate the p50 the gateway adds (HTTP minus broker, each round, then median)."""
    rows = [
        "| round | mode | load | done | req/s | p50 ms | p90 ms | p99 ms | gateway CPU ms/req | load1 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in result["points"]:
        cpu = "" if p["gateway_cpu_ms_per_request"] is None else p["gateway_cpu_ms_per_request"]
        rows.append(
            f"| {p['round']} | {p['mode']} | {p['load']} | {p['completed']} | {p['throughput_rps']} | "
            f"{p['p50_ms']} | {p['p90_ms']} | {p['p99_ms']} | {cpu} | {p['load1'][0]}–{p['load1'][1]} |"
        )
    rows.append("")
    rows += [f"- {line}" for line in summary_lines(result["points"])]
    return "\n".join(rows) + "\n"


def summary_lines(points: list[dict[str, Any]]) -> list[str]:
    """Per load and door, the p50 it adds over broker-direct (each round, then the median); per door, req/s."""
    added: dict[tuple[str, str], list[float]] = {}
    for r in {p["round"] for p in points if p["round"] != "throughput"}:
        by = {(p["load"], p["mode"]): p for p in points if p["round"] == r}
        for (load, mode), p in by.items():
            if mode != "broker" and (load, "broker") in by:
                added.setdefault((load, mode), []).append(round(p["p50_ms"] - by[(load, "broker")]["p50_ms"], 3))
    lines = [
        f"{load}: p50 added by {mode} per round {vals}, median {statistics.median(vals):.2f} ms"
        for (load, mode), vals in sorted(added.items())
    ]
    rps: dict[str, list[float]] = {}
    for p in points:
        if p["round"] == "throughput":
            rps.setdefault(p["mode"], []).append(p["throughput_rps"])
    lines += [f"closed loop, {mode}: {vals} req/s, median {statistics.median(vals):.1f}" for mode, vals in rps.items()]
    if rps.get("http") and rps.get("oip-grpc"):
        ratio = statistics.median(rps["oip-grpc"]) / statistics.median(rps["http"])
        lines.append(f"oip-grpc / native http sustained req/s (medians): {ratio:.2f}x")
    return lines


@click.command("gateway")
@click.option("--broker", required=True, help="redis://… (the gateway keeps results there too) or kafka://…")
@click.option("--stage-command", default="", help="argv before the stage name (default `visionpipe serve`)")
@click.option("--rate", "rates", type=float, multiple=True, default=(50.0, 200.0), show_default=True)
@click.option("--duration", type=float, default=10.0, show_default=True, help="seconds per point")
@click.option("--rounds", type=int, default=2, show_default=True, help="ABBA rounds of the latency points")
@click.option("--concurrency", type=int, default=16, show_default=True, help="clients of the throughput points")
@click.option(
    "--compute-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="pass-through stages' stand-in compute (0: none)",
)
@click.option(
    "--mode", "modes", type=click.Choice(MODES), multiple=True, default=MODES, show_default=True, help="paths in"
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def bench_gateway(
    broker: str,
    stage_command: str,
    rates: tuple[float, ...],
    duration: float,
    rounds: int,
    concurrency: int,
    compute_scale: float,
    modes: tuple[str, ...],
    json_path: Path,
) -> None:
    """Gateway vs broker-direct latency at the same load, and sustained requests/s; results to --json."""
    logdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))  # the processes' logs: for a failed run, not results
    result = asyncio.run(
        _bench(broker, stage_command, list(rates), duration, rounds, concurrency, compute_scale, logdir, modes)
    )
    result["machine"] = {"load1_end": round(load1(), 2), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown(result))
    click.echo(f"wrote {json_path} and {json_path.with_suffix('.md')} (process logs in {logdir})")
