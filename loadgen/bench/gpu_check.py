"""``visionpipe bench gpu-check DIR``: everything measured on a GPU, in one command that fits a short loan of one.

A GPU machine is lent for minutes, once, so this is built to lose nothing:

* the sections run most valuable first (``gpu_sections.SECTIONS``: the GPU tests, overlapped vs
  serial-pinned for the shipped detector and classifier, the classifier stage at saturation, batch 1
  eager vs CUDA graphs, the decode stage, ``visionpipe run`` vs the plain script, the policies);
* ``gpu-check.json`` and ``gpu-check.md`` are rewritten after every section (a temporary file, then a
  rename), and a section is marked ``running`` before it starts, so a kill, an OOM or a crash in a CUDA
  library leaves every finished figure and says where it stopped;
* each section prints one line of JSON to stdout as it ends;
* ``--budget-s``: each section has an estimated cost and is skipped, and said to be, when it no longer
  fits; a section that overruns is cut (its children's timeouts, then ``faulthandler``, which dumps every
  thread's stack and ends the process);
* a section's failure is recorded in its place and the next one runs.

``--cpu`` runs the same sections on the CPU at toy sizes: what CI runs, so the script is known to work
before a GPU is lent. ``benchmarks/gpu-check.sh`` runs it on the lent machine as that machine comes.
"""

from __future__ import annotations

import faulthandler
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from visionpipe.loadgen.bench.gpu_report import goals, headline, markdown
from visionpipe.loadgen.bench.gpu_sections import SECTIONS, Context, Limits, Section

# Settings that make the CPU mode's stage models toy-sized (the GPU run uses the shipped defaults).
CPU_ENV = {
    "VISIONPIPE_DECODE__INPUT_SIZE": "320",
    "VISIONPIPE_DETECTOR__INPUT_SIZE": "128",
    "VISIONPIPE_DETECTOR__CROP_SIZE": "64",
    "VISIONPIPE_DETECTOR__MAX_DETECTIONS": "2",
    "VISIONPIPE_EXECUTOR__WARMUP_REPEATS": "1",
}
# 330 s of sections, with start-up and the wrapper's wheel install, stays inside 6 minutes on the lent machine.
DEFAULT_BUDGET_S = 330.0
# A section stops adding work past its estimate times this (or the budget's end, if sooner)...
SOFT_OVERRUN = 1.25
# ...its child processes are killed past this...
CHILD_OVERRUN = 1.5
# ...and past this the whole process is ended by faulthandler, every thread's stack on stderr first.
HARD_OVERRUN = 2.0
HARD_GRACE_S = 15.0


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


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save(doc: dict[str, Any], out_dir: Path, started: float) -> None:
    """Both files, whole, replacing the last ones: readable at any moment, whatever happens next."""
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    doc["goals"] = goals(doc)
    _atomic_write(out_dir / "gpu-check.json", json.dumps(doc, indent=1, default=str) + "\n")
    _atomic_write(out_dir / "gpu-check.md", markdown(doc))


def limits_for(estimate: float, budget_end: float) -> tuple[Limits, float]:
    """The section's soft deadline and child timeout, and when the process is ended if it is still running."""
    now = time.monotonic()
    left = budget_end - now
    soft = min(left, estimate * SOFT_OVERRUN)
    child = min(left, estimate * CHILD_OVERRUN)
    hard = min(left, estimate * HARD_OVERRUN) + HARD_GRACE_S
    return Limits(now + soft, now + max(child, 1.0)), hard


def run_section(
    doc: dict[str, Any], sec: Section, ctx: Context, budget_end: float, out_dir: Path, started: float
) -> None:
    """One section into ``doc["sections"]``, saved before and after; its one-line summary on stdout."""
    estimate = sec.estimate(ctx.cpu)
    rec: dict[str, Any] = {"title": sec.title, "estimate_s": estimate}
    left = budget_end - time.monotonic()
    if sec.name in doc["skip"]:
        rec.update(state="skipped", reason="left out with --skip")
    elif estimate > left:
        rec.update(state="skipped", reason=f"needs about {estimate:.0f} s; {max(left, 0):.0f} s of the budget left")
    else:
        limits, hard_s = limits_for(estimate, budget_end)
        rec.update(state="running", loadavg_before=_load(), killed_after_s=round(hard_s, 1))
        doc["sections"][sec.name] = rec
        save(doc, out_dir, started)
        faulthandler.dump_traceback_later(hard_s, exit=True)
        t0 = time.monotonic()
        try:
            rec["result"] = sec.run(ctx, limits)
            rec["state"] = "ok"
        except Exception as exc:
            rec.update(state="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
        finally:
            faulthandler.cancel_dump_traceback_later()
        rec["elapsed_s"] = round(time.monotonic() - t0, 1)
        rec["loadavg"] = _load()
        rec.pop("killed_after_s", None)
    doc["sections"][sec.name] = rec
    save(doc, out_dir, started)
    click.echo(json.dumps({"section": sec.name, **headline(sec.name, rec)}, default=str), nl=True)
    sys.stdout.flush()


def run_plan(
    sections: Sequence[Section], ctx: Context, out_dir: Path, budget_s: float, skip: Sequence[str], command: str
) -> dict[str, Any]:
    """Every section in order under one budget; the document as it was last saved."""
    env = environment(ctx.device)  # torch's CUDA start-up happens here, before the budget's clock starts
    started = time.monotonic()
    budget_end = started + budget_s
    doc: dict[str, Any] = {
        "mode": "cpu" if ctx.cpu else "gpu",
        "command": command,
        "env": env,
        "budget_s": budget_s,
        "skip": list(skip),
        "plan": [{"name": s.name, "title": s.title, "estimate_s": s.estimate(ctx.cpu)} for s in sections],
        "sections": {},
        "finished": False,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save(doc, out_dir, started)
    for sec in sections:
        run_section(doc, sec, ctx, budget_end, out_dir, started)
    doc["finished"] = True
    doc["loadavg_end"] = _load()
    save(doc, out_dir, started)
    return doc


@click.command("gpu-check")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cpu", is_flag=True, help="the same sections on the CPU at toy sizes (CI)")
@click.option(
    "--budget-s",
    type=float,
    default=DEFAULT_BUDGET_S,
    show_default=True,
    help="seconds the sections may take in all: a section whose estimate no longer fits is skipped, and says so",
)
@click.option("--with-compile", is_flag=True, help="also time batch 1 with torch.compile (adds ~1 min)")
@click.option("--skip", multiple=True, type=click.Choice([s.name for s in SECTIONS]), help="sections to leave out")
def gpu_check(out_dir: Path, cpu: bool, budget_s: float, with_compile: bool, skip: tuple[str, ...]) -> None:
    """The GPU measurements (or their CPU mode) as gpu-check.json and gpu-check.md in OUT_DIR, written as they go."""
    if cpu:
        for key, value in CPU_ENV.items():
            os.environ.setdefault(key, value)
    faulthandler.enable()  # a crash in a CUDA library still shows where every thread was
    device = "cpu" if cpu else "cuda"
    work = Path(tempfile.mkdtemp(prefix="vp-gpu-check-"))
    ctx = Context(device, cpu, work, with_compile)
    doc = run_plan(SECTIONS, ctx, out_dir, budget_s, skip, "visionpipe " + " ".join(sys.argv[1:]))
    states = {name: rec["state"] for name, rec in doc["sections"].items()}
    click.echo(f"wrote {out_dir / 'gpu-check.json'} and gpu-check.md in {doc['elapsed_s']} s: {states}", err=True)
