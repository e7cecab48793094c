"""``visionpipe bench gpu-check DIR``: everything issue 15 measures on a GPU, in one command, in ≤ 8 minutes.

Sections, each timed, each allowed to fail without losing the others (its
error is recorded in its place):

1. the GPU tests (``pytest -m gpu`` on the files that hold them);
2. the executor benchmark on the device for ResNet-50 and for the shipped
   detector and classifier: overlapped vs serial-pinned vs serial-pageable,
   adaptive vs the swept timeout batcher (``executor_live``);
3. batch-1 latency of ResNet-50 with and without CUDA graphs;
4. the decode stage vs raw batched ``decode_jpeg`` at 1080p and 640×480;
5. the classifier stage at saturation vs raw b256 forwards of its model;
6. ``visionpipe run`` on the memory broker at 1080p and 640×480, with the
   per-stage split.

Writes ``gpu-check.json`` and ``gpu-check.md`` (a Markdown section for
benchmarks/RESULTS.md) to DIR. ``--cpu`` runs the same sections on the CPU
at toy sizes — what CI runs, so the script is known to work before a GPU is
lent. ``benchmarks/gpu-check.sh`` (``make gpu-check DIR=…``) runs it on the
lent machine as that machine comes: no venv, carried wheels.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from visionpipe.loadgen.bench.gpu_report import markdown

# The files holding the `gpu`-marked tests; collecting only these keeps test-only packages the GPU box lacks away.
GPU_TEST_FILES = (
    "tests/executor/test_gpu.py",
    "tests/services/decode/test_stage.py",
    "tests/services/commands/test_run.py",
)
# Plugins loaded explicitly: the lent machine's own pytest plugins are unknown, autoloading them could break the run.
PYTEST_PLUGINS = ("pytest_asyncio.plugin", "pytest_timeout")
# Settings that make the CPU mode's stage models toy-sized (the GPU run uses the shipped defaults).
CPU_ENV = {
    "VISIONPIPE_DECODE__INPUT_SIZE": "320",
    "VISIONPIPE_DETECTOR__CROP_SIZE": "64",
    "VISIONPIPE_DETECTOR__MAX_DETECTIONS": "2",
    "VISIONPIPE_EXECUTOR__WARMUP_REPEATS": "1",
}


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def environment(device: str) -> dict[str, Any]:
    import torch
    import torchvision

    cuda = device.startswith("cuda")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "CPU",
        "cpus": os.cpu_count(),
        "loadavg_start": _load(),
    }


def section(doc: dict[str, Any], name: str, run: Callable[[], Any]) -> None:
    """Run one section into ``doc[name]``; a failure is recorded there, the next section still runs."""
    started = time.monotonic()
    click.echo(f"== {name}", err=True)
    try:
        result: dict[str, Any] = {"result": run()}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        click.echo(f"   {name} failed: {result['error']}", err=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    result["loadavg"] = _load()
    doc[name] = result


def gpu_tests(timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` in a child process; counts and failures from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "--junitxml", str(xml)]
        for plugin in PYTEST_PLUGINS:
            cmd += ["-p", plugin]
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        proc = subprocess.run([*cmd, *GPU_TEST_FILES], capture_output=True, text=True, timeout=timeout_s, env=env)
        out: dict[str, Any] = {"exit_code": proc.returncode, "tail": proc.stdout[-3000:] + proc.stderr[-2000:]}
        if xml.exists():
            root = ET.parse(xml).getroot()
            suite = root.find("testsuite") if root.tag == "testsuites" else root
            assert suite is not None
            out.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
            out["failed"] = [
                f"{c.get('classname')}::{c.get('name')}"
                for c in suite.iter("testcase")
                if c.find("failure") is not None or c.find("error") is not None
            ]
            out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
        return out


def executor_benches(device: str, cpu: bool, budget_s: float) -> dict[str, Any]:
    from visionpipe.loadgen.bench.executor_live import run_live

    models = ("mobilenet_v3_small", "detector", "classifier") if cpu else ("resnet50", "detector", "classifier")
    out: dict[str, Any] = {}
    start = time.monotonic()
    for i, model in enumerate(models):
        share = (budget_s - (time.monotonic() - start)) / (len(models) - i)
        deadline = time.monotonic() + share
        try:
            out[model] = run_live(
                device,
                model,
                None,
                4 if cpu else None,
                0.4 if cpu else 1.2,
                64 if cpu else None,
                0,
                cpu,
                deadline=deadline,
            )
        except Exception as exc:
            out[model] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    return out


def decode_benches(device: str, cpu: bool) -> dict[str, Any]:
    from visionpipe.loadgen.bench.stage_bench import decode_vs_raw
    from visionpipe.samples import scene_jpeg

    out = {}
    for label, (w, h), n in (("1080p", (1920, 1080), 8 if cpu else 96), ("640x480", (640, 480), 8 if cpu else 256)):
        images = [scene_jpeg(w, h, seed=i) for i in range(n)]
        out[label] = decode_vs_raw(images, device, batch=4 if cpu else 16)
    return out


def pipeline_runs(device: str, cpu: bool, folder: Path, timeout_s: float) -> dict[str, Any]:
    """``visionpipe run --device …`` in a child process per resolution, as a user runs it; its summary JSON."""
    from visionpipe.samples import write_bench_set

    write_bench_set(folder, vga=8 if cpu else 400, hd=4 if cpu else 150)
    out = {}
    for label, sub in (("1080p", "hd"), ("640x480", "vga")):
        summary, results = folder / f"summary-{sub}.json", folder / f"results-{sub}.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "visionpipe",
            "run",
            str(folder / sub),
            "--device",
            device,
            "--weights",
            "random",
            "--out",
            str(results),
            "--summary-json",
            str(summary),
            "--quiet",
        ]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        rec: dict[str, Any] = {"exit_code": proc.returncode, "wall_s": round(time.monotonic() - t0, 1)}
        if proc.returncode == 0 and summary.exists():
            rec["summary"] = json.loads(summary.read_text())
        else:
            rec["tail"] = (proc.stdout + proc.stderr)[-3000:]
        out[label] = rec
    return out


@click.command("gpu-check")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cpu", is_flag=True, help="the same sections on the CPU at toy sizes (CI)")
@click.option(
    "--executor-s",
    type=float,
    default=170.0,
    show_default=True,
    help="time the executor benches share (three models); runs past it are skipped, and counted",
)
@click.option("--with-compile", is_flag=True, help="also time batch 1 with torch.compile (adds ~1 min)")
@click.option("--skip", multiple=True, help="sections to leave out: tests, executor, batch1, decode, classifier, run")
def gpu_check(out_dir: Path, cpu: bool, executor_s: float, with_compile: bool, skip: tuple[str, ...]) -> None:
    """Issue 15's GPU measurements (or their CPU mode) as gpu-check.json and gpu-check.md in OUT_DIR."""
    from visionpipe.loadgen.bench import stage_bench

    if cpu:
        for key, value in CPU_ENV.items():
            os.environ.setdefault(key, value)
    device = "cpu" if cpu else "cuda"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    doc: dict[str, Any] = {"mode": "cpu" if cpu else "gpu", "command": " ".join(sys.argv), "env": environment(device)}
    work = Path(tempfile.mkdtemp(prefix="vp-gpu-check-"))
    plan: list[tuple[str, Callable[[], Any]]] = [
        ("tests", lambda: gpu_tests(240 if cpu else 150)),
        ("executor", lambda: executor_benches(device, cpu, executor_s)),
        (
            "batch1",
            lambda: stage_bench.batch1_latency(
                "mobilenet_v3_small" if cpu else "resnet50", device, 10 if cpu else 300, with_compile
            ),
        ),
        ("decode", lambda: decode_benches(device, cpu)),
        ("classifier", lambda: stage_bench.classifier_saturation(device, 4 if cpu else 256, 2 if cpu else 40)),
        ("run", lambda: pipeline_runs(device, cpu, work, 300 if cpu else 120)),
    ]
    for name, run in plan:
        if name not in skip:
            section(doc, name, run)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    (out_dir / "gpu-check.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out_dir / "gpu-check.md").write_text(markdown(doc))
    click.echo(f"wrote {out_dir / 'gpu-check.json'} and {out_dir / 'gpu-check.md'} in {doc['elapsed_s']} s", err=True)
