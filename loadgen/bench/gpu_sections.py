"""What each section of ``visionpipe bench gpu-check`` runs, in the order that puts the most valuable figures first.

Each section is a function of a ``Context`` (device, mode, scratch folder) and a ``Limits`` (when to stop
adding work, how long a child process may run), and returns a plain dict for the JSON. ``SECTIONS`` holds
them with the time each is expected to take on the lent GPU machine and in the CPU mode, so the runner can
skip what no longer fits its budget. Child processes are run so that one that times out or dies leaves a
record saying so, and the others keep theirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The files holding the `gpu`-marked tests; collecting only these keeps test-only packages the GPU box lacks away.
GPU_TEST_FILES = (
    "tests/executor/test_gpu.py",
    "tests/services/decode/test_stage.py",
    "tests/services/commands/test_run.py",
    "tests/services/models/test_gpu.py",
)
# Needs the bundled models' weights: collected only where they are present (carried to the lent machine).
GPU_TEST_FILES_WITH_WEIGHTS = ("tests/services/models/test_gpu.py",)
# Plugins loaded explicitly: the lent machine's own pytest plugins are unknown, autoloading them could break the run.
PYTEST_PLUGINS = ("pytest_asyncio.plugin", "pytest_timeout")
# One test that hangs must not take the section with it.
TEST_TIMEOUT_S = 90
# Trace length of each live executor run, in seconds.
LIVE_DURATION_S = {"gpu": 1.0, "cpu": 0.4}
# Random NanoDet scores sit near 0.5 everywhere; above this nothing passes, so without the real weights both the
# pipeline and the plain script do the same work (decode and detector; no boxes, no classifier).
RANDOM_THRESHOLD = 0.99


@dataclass(frozen=True)
class Context:
    device: str  # "cuda" or "cpu"
    cpu: bool
    work: Path  # scratch folder
    with_compile: bool = False


@dataclass(frozen=True)
class Limits:
    deadline: float  # monotonic: stop adding work after this
    child_deadline: float  # monotonic: a child process still running then is killed

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def child_left(self) -> float:
        return self.child_deadline - time.monotonic()


def run_child(cmd: list[str], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One child process; its record says whether it finished, failed or ran out of time, with its output's tail."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 1.0), env=env)
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr)
        return {"exit_code": None, "timed_out": True, "wall_s": round(time.monotonic() - t0, 1), "tail": out[-3000:]}
    rec: dict[str, Any] = {"exit_code": proc.returncode, "timed_out": False, "wall_s": round(time.monotonic() - t0, 1)}
    rec["stdout"], rec["tail"] = proc.stdout, (proc.stdout[-2000:] + proc.stderr[-2000:])
    return rec


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def bundled_weights_present() -> bool:
    """Whether the bundled models' files are here (on the lent machine: carried in), so DEFAULT weights load."""
    from visionpipe.services.models.fetch import Status, status
    from visionpipe.services.models.registry import BUNDLED
    from visionpipe.settings import load_settings

    cache = load_settings().models.cache_dir
    return all(status(model, cache) is Status.OK for model in BUNDLED.values())


def gpu_tests(ctx: Context, limits: Limits) -> dict[str, Any]:
    """``pytest -m gpu`` in a child process; counts from its JUnit XML, or from its output if it was cut short."""
    xml = ctx.work / "junit.xml"
    files = list(GPU_TEST_FILES) + (list(GPU_TEST_FILES_WITH_WEIGHTS) if bundled_weights_present() else [])
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu", "--junitxml", str(xml)]
    cmd += ["--timeout", str(TEST_TIMEOUT_S)]
    for plugin in PYTEST_PLUGINS:
        cmd += ["-p", plugin]
    rec = run_child([*cmd, *files], limits.child_left(), {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    out: dict[str, Any] = {"files": files, **{k: v for k, v in rec.items() if k != "stdout"}}
    if xml.exists() and not rec["timed_out"]:
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
    else:  # cut short: what the verbose lines say so far
        lines = rec["tail"].splitlines()
        for word, key in (("PASSED", "passed"), ("FAILED", "failures"), ("ERROR", "errors"), ("SKIPPED", "skipped")):
            out[key] = sum(1 for line in lines if f" {word}" in line and "::" in line)
        out["failed"] = [line.split(" ")[0] for line in lines if " FAILED" in line and "::" in line]
    return out


def _live(ctx: Context, limits: Limits, parts: tuple[str, ...]) -> dict[str, Any]:
    """The executor benchmark on the device for the shipped detector and classifier, sharing the time left."""
    from visionpipe.loadgen.bench.executor_live import run_live

    out: dict[str, Any] = {}
    models = ("detector", "classifier")
    for i, model in enumerate(models):
        share = limits.left() / (len(models) - i)
        try:
            out[model] = run_live(
                ctx.device,
                model,
                None,
                4 if ctx.cpu else None,
                LIVE_DURATION_S["cpu" if ctx.cpu else "gpu"],
                64 if ctx.cpu else None,
                0,
                ctx.cpu,
                deadline=time.monotonic() + share,
                parts=parts,
                pageable_grid=False,
            )
        except Exception as exc:
            out[model] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def overlap(ctx: Context, limits: Limits) -> dict[str, Any]:
    """Overlapped vs serial-pinned (vs pageable at saturation), greedy batching, on a load grid and at saturation."""
    return _live(ctx, limits, ("mechanics",))


def policies(ctx: Context, limits: Limits) -> dict[str, Any]:
    """Adaptive vs the timeout batcher swept over its delays, on the overlapped mechanics."""
    return _live(ctx, limits, ("policies",))


def classifier(ctx: Context, limits: Limits) -> dict[str, Any]:
    from visionpipe.loadgen.bench.stage_bench import classifier_saturation

    return classifier_saturation(ctx.device, 4 if ctx.cpu else 256, 2 if ctx.cpu else 40)


def batch1(ctx: Context, limits: Limits) -> dict[str, Any]:
    """The shipped classifier at batch 1, eager vs CUDA graphs; ResNet-50 too on a GPU, while there is time."""
    from visionpipe.loadgen.bench.stage_bench import batch1_latency

    models = ("efficientnet_lite0",) if ctx.cpu else ("efficientnet_lite0", "resnet50")
    out: dict[str, Any] = {}
    for model in models:
        if out and limits.left() <= 0:
            out[model] = {"skipped": "no time left in the section"}
            continue
        out[model] = batch1_latency(model, ctx.device, 10 if ctx.cpu else 300, ctx.with_compile)
    return out


def decode(ctx: Context, limits: Limits) -> dict[str, Any]:
    from visionpipe.loadgen.bench.stage_bench import decode_vs_raw
    from visionpipe.samples import scene_jpeg

    out: dict[str, Any] = {}
    sizes = (("640x480", (640, 480), 8 if ctx.cpu else 256), ("1080p", (1920, 1080), 8 if ctx.cpu else 96))
    for label, (w, h), n in sizes:
        if out and limits.left() <= 0:
            out[label] = {"skipped": "no time left in the section"}
            continue
        out[label] = decode_vs_raw([scene_jpeg(w, h, seed=i) for i in range(n)], ctx.device, batch=4 if ctx.cpu else 16)
    return out


def run(ctx: Context, limits: Limits) -> dict[str, Any]:
    """``visionpipe run`` on 640x480 photos vs the plain script on the same GPU, then at 1080p; each a child."""
    from visionpipe.loadgen.bench.pipeline import write_photo_set
    from visionpipe.samples import write_bench_set

    photos = write_photo_set(ctx.work / "photos", 4 if ctx.cpu else 400)
    write_bench_set(ctx.work / "bench", vga=0, hd=2 if ctx.cpu else 150)
    real = bundled_weights_present()
    weights = ["--weights", "DEFAULT"] if real else ["--weights", "random", "--score-threshold", str(RANDOM_THRESHOLD)]
    # (label, command, its share of the time left when it starts): the ratio's two sides first.
    cases: list[tuple[str, list[str], float]] = [
        ("640x480 photos: visionpipe run", _run_cmd(ctx, [str(p) for p in photos], weights, "vga"), 1.0),
        ("640x480 photos: plain script", _plain_cmd(ctx, [str(p) for p in photos], weights), 1.0),
        ("1080p scenes: visionpipe run", _run_cmd(ctx, [str(ctx.work / "bench" / "hd")], weights, "hd"), 0.7),
    ]
    out: dict[str, Any] = {"weights": "bundled (DEFAULT)" if real else f"random, score threshold {RANDOM_THRESHOLD}"}
    for i, (label, cmd, weight) in enumerate(cases):
        if i and limits.left() <= 0:
            out[label] = {"skipped": "no time left in the section"}
            continue
        share = weight / sum(w for _, _, w in cases[i:])
        out[label] = _case_result(label, run_child(cmd, limits.child_left() * share), ctx.work)
    return out


def _run_cmd(ctx: Context, inputs: list[str], weights: list[str], tag: str) -> list[str]:
    results, summary = ctx.work / f"results-{tag}.jsonl", ctx.work / f"summary-{tag}.json"
    return [
        *(sys.executable, "-m", "visionpipe", "run", *inputs, "--device", ctx.device, *weights),
        *("--out", str(results), "--summary-json", str(summary), "--quiet"),
    ]


def _plain_cmd(ctx: Context, inputs: list[str], weights: list[str]) -> list[str]:
    out = ctx.work / "plain.json"
    module = "visionpipe.loadgen.bench.plain_script"
    return [sys.executable, "-m", module, *inputs, *weights, "--device", ctx.device, "--json", str(out)]


def _case_result(label: str, rec: dict[str, Any], work: Path) -> dict[str, Any]:
    """A child's record: its JSON summary when it finished, else its exit and output's tail."""
    keep = {k: rec[k] for k in ("exit_code", "timed_out", "wall_s")}
    if rec["exit_code"] != 0:
        return {**keep, "tail": rec["tail"]}
    if label.endswith("plain script"):
        return {**keep, "summary": json.loads((work / "plain.json").read_text())}
    tag = "vga" if label.startswith("640x480") else "hd"
    summary = json.loads((work / f"summary-{tag}.json").read_text())
    return {**keep, "summary": summary, "non_dnn_share_at_p50": non_dnn_share_at_p50(work / f"results-{tag}.jsonl")}


def non_dnn_share_at_p50(results: Path) -> float | None:
    """Everything but detector and classifier compute, as a share of the requests around the median latency.

    The requests between the 45th and 55th percentile of end-to-end latency, their shares averaged: what the
    typical request spends outside the two models.
    """
    from visionpipe.breakdown import non_dnn_share

    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    timed = sorted((r["latency_ms"] for r in records if r.get("ok") and "latency_ms" in r), key=lambda c: c["total"])
    if not timed:
        return None
    lo, hi = int(len(timed) * 0.45), max(int(len(timed) * 0.55), int(len(timed) * 0.45) + 1)
    shares = [s for s in (non_dnn_share(c) for c in timed[lo:hi]) if s is not None]
    return round(sum(shares) / len(shares), 4) if shares else None


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[Context, Limits], dict[str, Any]]
    estimate_gpu_s: float  # on one H100 of the lent machines, as planned (corrected once a run has measured it)
    estimate_cpu_s: float  # the CPU mode on two shared cores

    def estimate(self, cpu: bool) -> float:
        return self.estimate_cpu_s if cpu else self.estimate_gpu_s


SECTIONS = (
    Section("tests", "GPU tests", gpu_tests, 75, 45),
    Section("overlap", "Executor: overlapped vs serial-pinned, shipped detector and classifier", overlap, 70, 40),
    Section("classifier", "Classifier stage at saturation vs raw batched forward", classifier, 20, 10),
    Section("batch1", "Batch-1 classifier latency, eager vs CUDA graphs", batch1, 20, 10),
    Section("decode", "Decode stage vs the same work done raw", decode, 25, 15),
    Section("run", "visionpipe run vs the plain script", run, 60, 120),
    Section("policies", "Executor: adaptive vs swept timeout", policies, 60, 40),
)
