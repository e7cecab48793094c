"""``visionpipe bench deadlines``: end-to-end deadlines through the three-stage simulator, three ways side by side.

(a) Triton-style: each stage batches up to its max batch with its own max queue delay, deadlines unseen; every
    pair of (detector, classifier) delays is run, with the front door's backlog watermark at its default and at
    what the pipeline clears within a deadline, and the best (most on-time results a second) kept per load.
(b) Nexus-style static split: each stage batches (the adaptive rule) against a fixed share of the deadline,
    shares proportional to the stages' batch times at the load's rate; with and without dropping what misses
    its stage's share, both watermarks, the best kept.
(c) Propagated deadlines: each stage's budget is the deadline less what the stages after it announce they
    expect; what can no longer make it is taken out and answered at once; the front door refuses (429) what
    the pipeline expects to miss; a result that arrives late anyway is answered ``deadline_exceeded``.

Every mode sees the same arrivals and fan-outs (common random numbers). The goals are checked and written with
the figures; a missed goal is reported as missed, with the numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import click
import numpy as np

from visionpipe.executor.expectation import alone_s
from visionpipe.executor.latency import LatencyModel
from visionpipe.executor.policy import AdaptivePolicy, TimeoutPolicy, keep_up_batch
from visionpipe.loadgen.bench.deadline_loads import DEADLINE_MS, FANOUT_MEAN, capacity, h100_pipeline, loads
from visionpipe.loadgen.bench.deadline_report import evaluate, print_report, summarize, timeline
from visionpipe.loadgen.bench.deadline_sim import Load, Mode, PipelineCost, simulate_pipeline
from visionpipe.loadgen.bench.simulate import warmed_model
from visionpipe.topology import CLASSIFIER, DECODE, DETECTOR, STAGES

DETECTOR_DELAYS_MS = (0.0, 5.0, 10.0, 20.0, 40.0)
CLASSIFIER_DELAYS_MS = (0.0, 2.0)
QUICK_DETECTOR_DELAYS_MS = (0.0, 10.0)
QUICK_CLASSIFIER_DELAYS_MS = (0.0,)
DEFAULT_WATERMARK = 2_000  # limits.ingress_high_watermark's default
TIMELINE_LOADS = ("burst", "fanout-shift", "ramp", "mixed-deadlines")


def _timeout(stage: str, cost: PipelineCost, delay_ms: float) -> Any:
    return partial(TimeoutPolicy, cost.stages[stage].max_batch, delay_ms)


def triton_modes(cost: PipelineCost, watermarks: tuple[int, ...], quick: bool) -> list[Mode]:
    det_delays = QUICK_DETECTOR_DELAYS_MS if quick else DETECTOR_DELAYS_MS
    cls_delays = QUICK_CLASSIFIER_DELAYS_MS if quick else CLASSIFIER_DELAYS_MS
    return [
        Mode(
            "a",
            {
                DECODE: _timeout(DECODE, cost, 0.0),
                DETECTOR: _timeout(DETECTOR, cost, d),
                CLASSIFIER: _timeout(CLASSIFIER, cost, c),
            },
            watermark=w,
            params={"detector_delay_ms": d, "classifier_delay_ms": c, "watermark": w},
        )
        for d in det_delays
        for c in cls_delays
        for w in watermarks
    ]


def static_shares(cost: PipelineCost, rate: float, fanout_mean: float = FANOUT_MEAN) -> dict[str, float]:
    """Nexus's split: each stage's share proportional to its batch time at the keep-up batch for ``rate``."""
    times = {}
    for name, spec in cost.stages.items():
        model: LatencyModel = warmed_model(spec.cost, True, (1, spec.max_batch), 64, 0)
        stage_rate = rate * (fanout_mean if name == CLASSIFIER else 1.0)
        b = keep_up_batch(model, stage_rate, True, spec.max_batch)
        times[name] = alone_s(model, b, True)
    total = sum(times.values())
    return {s: t / total for s, t in times.items()}


def static_modes(cost: PipelineCost, shares: dict[str, float], watermarks: tuple[int, ...]) -> list[Mode]:
    rounded = {s: round(v, 4) for s, v in shares.items()}
    return [
        Mode(
            "b",
            dict.fromkeys(STAGES, AdaptivePolicy),
            split="static",
            drop=drop,
            watermark=w,
            static_shares=shares,
            params={"drop": drop, "watermark": w, "shares": rounded},
        )
        for drop in (False, True)
        for w in watermarks
    ]


def propagated_mode() -> Mode:
    return Mode(
        "c",
        dict.fromkeys(STAGES, AdaptivePolicy),
        split="propagate",
        drop=True,
        admission=True,
        judge_at_end=True,
        params={"watermark": DEFAULT_WATERMARK},
    )


def nominal_rate(load: Load) -> float:
    return len(load.arrivals_ns) / load.duration_s


def run_all(cost: PipelineCost, duration_s: float, seed: int, quick: bool, deadline_ms: float) -> dict[str, Any]:
    cap = capacity(cost)
    watermarks = (DEFAULT_WATERMARK, int(cap * deadline_ms / 1e3))
    rows: list[dict[str, Any]] = []
    timelines: dict[str, dict[str, Any]] = {}
    for load in loads(cap, duration_s, seed, deadline_ms):
        modes = [
            *triton_modes(cost, watermarks, quick),
            *static_modes(cost, static_shares(cost, nominal_rate(load)), watermarks),
            propagated_mode(),
        ]
        started = time.perf_counter()
        outcomes = {}
        for i, mode in enumerate(modes):
            outcome = simulate_pipeline(cost, mode, load, seed=seed)
            row = summarize(mode, load, outcome)
            row["run"] = i
            rows.append(row)
            outcomes[i] = outcome
        click.echo(f"  {load.name:14s} {len(modes)} runs in {time.perf_counter() - started:5.1f} s", err=True)
        if load.name in TIMELINE_LOADS:
            timelines[load.name] = {
                mode: timeline(load, outcomes[best["run"]])
                for mode, best in _best_by_mode([r for r in rows if r["load"] == load.name]).items()
            }
    return {"rows": rows, "timelines": timelines, "capacity": cap, "watermarks": watermarks}


def _best_by_mode(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = (r["goodput"], r["attainment"])
        if r["mode"] not in best or key > (best[r["mode"]]["goodput"], best[r["mode"]]["attainment"]):
            best[r["mode"]] = r
    return best


@click.command("deadlines")
@click.option("--duration", type=float, default=10.0, show_default=True, help="seconds per load")
@click.option("--deadline-ms", type=float, default=DEADLINE_MS, show_default=True, help="every request's deadline")
@click.option("--noise", type=float, default=0.03, show_default=True, help="relative jitter of every phase time")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="fewer swept baseline points (smoke runs)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bench_deadlines(
    duration: float,
    deadline_ms: float,
    noise: float,
    seed: int,
    quick: bool,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Triton-style per-stage delays vs a static split vs propagated deadlines, on the H100 pipeline cost model."""
    started = time.perf_counter()
    cost = h100_pipeline(noise)
    result = run_all(cost, duration, seed, quick, deadline_ms)
    rows = result["rows"]
    doc = {
        "meta": {
            "command": "visionpipe bench deadlines " + " ".join(sys.argv[3:]),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": "discrete-event simulation (virtual clock)",
            "cost": {s: spec.cost.name for s, spec in cost.stages.items()},
            "max_batch": {s: spec.max_batch for s, spec in cost.stages.items()},
            "deadline_ms": deadline_ms,
            "duration_s": duration,
            "noise": noise,
            "seed": seed,
            "capacity_per_s": round(result["capacity"], 1),
            "watermarks": list(result["watermarks"]),
            "hop_median_ms": cost.hop_median_ms,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "elapsed_s": 0.0,
        },
        "rows": rows,
        "best": best_rows(rows),
        # The same without the watermark tuned to the deadline: what a deployment with the default front door has.
        "best_default_watermark": best_rows([r for r in rows if r["params"].get("watermark") == DEFAULT_WATERMARK]),
        "timelines": result["timelines"],
    }
    doc["goals"] = evaluate(doc["best"])
    doc["goals_default_watermark"] = evaluate(doc["best_default_watermark"])
    doc["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(doc)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=1, default=_plain) + "\n")
        click.echo(f"wrote {json_path}")
    if plot_path:
        from visionpipe.loadgen.bench.deadline_report import plot

        plot(plot_path, doc)
        click.echo(f"wrote {plot_path}")


def best_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best row of each mode at each load (most results in time a second; then attainment)."""
    names = dict.fromkeys(r["load"] for r in rows)
    return [row for name in names for row in _best_by_mode([r for r in rows if r["load"] == name]).values()]


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
