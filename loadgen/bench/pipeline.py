"""``visionpipe bench pipeline``: the pipeline against a plain script and against the cores' ceiling, on the CPU.

Every case a fresh process, rounds interleaved (the order rotates each round) so a shared machine's load
hits every case alike, the load average recorded before each:

* **photos** — 640x480 JPEGs cut from the shipped photographs (1–3 objects each), **crowded** — 640x480
  mosaics of 3x3 of them at score threshold 0.3 (9–20 objects, ~13 crops an image). For each: the plain
  script (:mod:`plain_script`: one loop, what a user writes by hand) in four variants, the best of which
  is the round's baseline, its one-thread variant giving the single-thread cost of an image and so the
  **ceiling**; ``visionpipe run`` with every stage in one process (embedded); and the three stages as
  separate ``visionpipe serve`` processes over one local redis-server (:mod:`pipeline_services`).
* **models** (``--only models``) — ``visionpipe run`` on the shipped samples with the bundled pair against
  the pair it replaces (ssdlite320_mobilenet_v3_large + mobilenet_v3_small, random weights, as ``make
  run`` ran before: top 20 boxes, so 20 crops per image; "detector only" at a threshold random scores
  never reach).

Throughput excludes start-up (model load, warm-up) everywhere. Writes the JSON (every round of every case,
and the summary: per round the ceiling, ratios and goals, :mod:`pipeline_report`) and a Markdown table
beside it.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from visionpipe.loadgen.bench import pipeline_report
from visionpipe.loadgen.bench.pipeline_services import services_case
from visionpipe.samples import SAMPLES_DIR, shipped_samples

BIN = Path(sys.executable).parent
OLD_PAIR = ["--detector", "ssdlite320_mobilenet_v3_large", "--classifier", "mobilenet_v3_small", "--weights", "random"]
PHOTOS = ("astronaut-512x512.jpg", "camera-512x512.jpg", "chelsea-451x300.jpg", "coffee-600x400.jpg")
CORES = len(os.sched_getaffinity(0))
CROWDED_THRESHOLD = "0.3"  # real objects of the tiles score 0.3–0.9; at 0.4 a 3x3 mosaic has ~5 boxes, at 0.3 ~13


def _tile(img: Any, rng: random.Random, size: tuple[int, int]) -> Any:
    """A random 75–100 % crop of ``img`` (60–100 % for tiles), mirrored half the time, resized to ``size``."""
    from PIL import Image, ImageOps

    f = rng.uniform(0.75, 1.0) if size == (640, 480) else rng.uniform(0.6, 1.0)
    w, h = int(img.width * f), int(img.height * f)
    x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    out = img.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return out.resize(size, Image.Resampling.BILINEAR)


def write_photo_set(folder: Path, count: int, grid: int = 1) -> list[Path]:
    """``count`` 640x480 JPEGs from the shipped photographs: each one photo, or a ``grid`` x ``grid`` mosaic."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(SAMPLES_DIR / name).convert("RGB") for name in PHOTOS]
    rng = random.Random(grid - 1)
    paths = []
    for i in range(count):
        canvas = Image.new("RGB", (640, 480))
        tw, th = 640 // grid, 480 // grid
        for k in range(grid * grid):
            img = photos[i % len(photos)] if grid == 1 else photos[rng.randrange(len(photos))]
            canvas.paste(_tile(img, rng, (tw, th)), ((k % grid) * tw, (k // grid) * th))
        paths.append(folder / f"{i:03d}.jpg")
        canvas.save(paths[-1], quality=85)
    return paths


@dataclass
class Case:
    runner: str  # "run": visionpipe run; "plain": the plain script; "services": serve processes over Redis
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)


# The plain script as a user would write it (roi_align crops, torch's threads), then cutting crops as the stages
# do on the CPU, with torch's threads, with one, and with OpenMP's passive waiting: the best in each round is the
# baseline; the one-thread variant measures the single-thread cost of an image (the ceiling).
PLAIN_VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    ", roi_align": (["--crops", "roi_align"], {}),
    ", resize": (["--crops", "resize"], {}),
    ", resize, 1 thread": (["--crops", "resize", "--threads", "1"], {}),
    # libgomp's threads spin at barriers by default; on cores shared with other jobs that can cost the plain script
    # several times its time, and sleeping instead made it the strongest baseline (benchmarks/RESULTS.md).
    ", resize, OMP passive": (["--crops", "resize"], {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def cases(samples: list[Path], workloads: dict[str, tuple[list[Path], list[str]]]) -> dict[str, Case]:
    """name -> case: the models comparison, then per workload the plain script's variants and the pipeline's forms."""
    s = [str(x) for x in samples]
    out = {
        "models/new pair": Case("run", s),
        "models/old pair as before": Case("run", [*s, *OLD_PAIR]),
        "models/old pair detector only": Case("run", [*s, *OLD_PAIR, "--score-threshold", "0.3"]),
    }
    for name, (paths, extra) in workloads.items():
        p = [str(x) for x in paths]
        threshold = {"VISIONPIPE_DETECTOR__SCORE_THRESHOLD": extra[1]} if extra else {}
        out[f"{name}: {pipeline_report.EMBEDDED}"] = Case("run", [*p, *extra])
        out[f"{name}: {pipeline_report.SERVICES}"] = Case("services", [], threshold, paths)
        for variant, (flags, env) in PLAIN_VARIANTS.items():
            out[f"{name}: {pipeline_report.PLAIN}{variant}"] = Case("plain", [*p, *extra, *flags], env)
    return out


KEEP = (
    "images_per_s",
    "cpu_ms_per_image",
    "latency_ms",
    "mean_ms_per_request",
    "share",
    "crops_per_image",
    "batch_ms_p50",
    "ms_per_image",
    "torch_threads",
    "cores",
    "threads",
    "copied_bytes_per_image",
)


def run_case(case: Case, scratch: Path) -> dict[str, Any]:
    load = float(Path("/proc/loadavg").read_text().split()[0])
    if case.runner == "services":
        return services_case(case.paths, case.env, scratch)
    out = scratch / "case.json"
    env = {**os.environ, "VISIONPIPE_SERVICE__DEVICE": "cpu", **case.env}
    if case.runner == "run":
        argv = [str(BIN / "visionpipe"), "run", *case.args, "--quiet", "--out", str(scratch / "r.jsonl")]
        argv += ["--summary-json", str(out)]
    else:
        argv = [sys.executable, "-m", "visionpipe.loadgen.bench.plain_script", *case.args, "--json", str(out)]
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    doc = json.loads(out.read_text())
    if case.runner == "plain":  # its "threads" is torch's thread count, not a census of the threads that ran
        doc["torch_threads"] = doc.pop("threads", None)
    return {"load1_before": load, **{k: doc[k] for k in KEEP if k in doc}}


MODEL_RATIOS = {
    "new pair / old pair as before (images/s)": ("models/new pair", "models/old pair as before"),
    "new pair / old pair detector only (images/s)": ("models/new pair", "models/old pair detector only"),
}


def summarise(rounds: list[dict[str, dict[str, Any]]], workloads: list[str]) -> dict[str, Any]:
    names = list(rounds[0])
    out: dict[str, Any] = {
        "median_images_per_s": {n: statistics.median(r[n]["images_per_s"] for r in rounds) for n in names}
    }
    out["model_ratios"] = {
        label: [round(r[a]["images_per_s"] / r[b]["images_per_s"], 3) for r in rounds]
        for label, (a, b) in MODEL_RATIOS.items()
        if a in names and b in names
    }
    out["workloads"] = {}
    for w in workloads:
        per_round = [pipeline_report.derive(r, w, CORES) for r in rounds]
        mine = [n for n in names if n.startswith(f"{w}: ")]
        out["workloads"][w] = {
            "rounds": per_round,
            "goals": pipeline_report.goals(per_round),
            "cases": {n.removeprefix(f"{w}: "): _case_median([r[n] for r in rounds]) for n in mine},
        }
    return out


def _case_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A case's medians over the rounds, with what the details table shows (threads, busy share, bytes)."""
    last = runs[-1]
    threads = last.get("threads")
    out: dict[str, Any] = {
        "images_per_s": statistics.median(r["images_per_s"] for r in runs),
        "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in runs),
        "threads_running": threads["running"] if isinstance(threads, dict) else f"torch {last.get('torch_threads')}",
    }
    stages = (last.get("cores") or {}).get("stages")
    out["busy_share"] = {k: v["busy_share"] for k, v in stages.items()} if stages else last.get("busy_share")
    if "copied_bytes_per_image" in last:
        out["bytes"] = f"{last['copied_bytes_per_image']} copied"
    elif "wire_bytes_per_image" in last:
        out["bytes"] = (
            ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in last["wire_bytes_per_image"].items()) + " on the wire"
        )
    return out


@click.command("pipeline")
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--repeat-samples", type=int, default=12, show_default=True, help="the samples, this many times over")
@click.option("--photos", type=int, default=96, show_default=True, help="640x480 images per workload")
@click.option("--only", multiple=True, help="run only cases whose name starts with this (photos, crowded, models)")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("benchmarks/pipeline-cpu.json"),
    show_default=True,
    help="the report; a Markdown table goes beside it (.md)",
)
def bench_pipeline(rounds: int, repeat_samples: int, photos: int, only: tuple[str, ...], json_path: Path) -> None:
    """The pipeline against a plain script and the cores' ceiling (and the bundled pair vs the old), on the CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        loads = {
            "photos": (write_photo_set(scratch / "photos", photos), []),
            "crowded": (write_photo_set(scratch / "crowded", photos, grid=3), ["--score-threshold", CROWDED_THRESHOLD]),
        }
        chosen = cases(shipped_samples() * repeat_samples, loads)
        chosen = {n: c for n, c in chosen.items() if not only or n.startswith(only)}
        results: list[dict[str, dict[str, Any]]] = []
        for r in range(rounds):
            order = list(chosen)[r % len(chosen) :] + list(chosen)[: r % len(chosen)]
            results.append({})
            for name in order:
                results[-1][name] = run_case(chosen[name], scratch)
                click.echo(f"round {r + 1} {name}: {results[-1][name]['images_per_s']} images/s", err=True)
            results[-1] = {n: results[-1][n] for n in chosen}
    workloads = [w for w in loads if any(n.startswith(f"{w}: ") for n in chosen)]
    doc: dict[str, Any] = {
        "command": "visionpipe bench pipeline " + " ".join(sys.argv[3:]),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": CORES,
        "inputs": {"photos": f"{photos} 640x480 photos", "crowded": f"{photos} 640x480 3x3 mosaics, threshold 0.3"},
        "rounds": results,
        "summary": summarise(results, workloads),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(pipeline_report.markdown(doc))
    click.echo(json.dumps(doc["summary"]["workloads"], indent=2)[:4000])
