"""The executor benchmark on a real device (``--device cpu|cuda``): the asyncio executor and ``TorchDevice``.

Open-loop Poisson arrivals in real time against a device function with
random weights: a torchvision classifier through the classifier stage's
function (``resnet50`` by default on CUDA), or a shipped stage's own function
(``--model detector`` / ``--model classifier``: the stage's default model,
built through its own path). Two side-by-sides, each in one run:

* mechanics — overlapped vs serial-pinned vs serial-pageable, all greedy
  (Triton delay 0), at rising load and at saturation: overlap alone is
  overlapped ÷ serial-pinned, pinned memory alone serial-pinned ÷ pageable;
* policies — adaptive vs the timeout batcher swept over its delays, on the
  best mechanics: batch sizes, GPU time per request, p99, the burst.

Short on purpose: on a shared machine absolute times are noisy, so only
ratios measured in the same run mean anything. On the CPU there are no
streams, copy engines or pinned memory, so only serial-pageable runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from visionpipe.executor.executor import BatchExecutor
from visionpipe.executor.latency import PHASES
from visionpipe.executor.policy import AdaptivePolicy, BatchPolicy, TimeoutPolicy
from visionpipe.executor.torch_device import TorchDevice, resolve_device
from visionpipe.loadgen.bench.simulate import SimResult
from visionpipe.loadgen.bench.suite import MECHANICS, adaptive_vs_greedy, measured
from visionpipe.loadgen.bench.targets import SATURATION, ratio, target
from visionpipe.loadgen.bench.traces import Trace, burst, poisson
from visionpipe.settings import ExecutorSettings

MECH_LOADS = (0.5, 0.8, 0.95)
POLICY_LOADS = (0.3, 0.7)
TIMEOUT_DELAYS_MS = (0.0, 1.0, 2.0, 5.0)
SATURATION_LOAD = 1.3
# Timed max-batch forwards for the raw-throughput reference (after one untimed). The fastest is kept: on a
# shared machine other jobs only ever slow a run down, so the minimum is the device's own speed.
RAW_REPEATS = 7
# SLO as a multiple of one max-batch forward: room for one batch filling while another computes, plus jitter.
SLO_BATCHES = 4.0
OVERLAP_HEAVY, OVERLAP_TARGET = 0.30, 1.10
STAGES = ("detector", "classifier")


@dataclass
class LiveModel:
    name: str
    fn: Callable[[torch.Tensor], Any]
    item_shape: tuple[int, ...]
    describe: str


def live_model(spec: str, device: str, image_size: int | None) -> LiveModel:
    """``detector``/``classifier``: that stage's own function and default model; else a torchvision classifier."""
    from visionpipe.services.models.loading import RANDOM, load_model
    from visionpipe.settings import Settings

    if spec in STAGES:
        from visionpipe.services.classifier.stage import ClassifierStage
        from visionpipe.services.detector.stage import DetectorStage

        stage = (DetectorStage if spec == "detector" else ClassifierStage)(Settings())
        name, _ = stage.model_spec
        fn = stage.build_fn(load_model(stage.kind, name, RANDOM), device)
        return LiveModel(spec, fn, stage.item_shape, f"the {spec} stage's own function, {name} (random weights)")
    from visionpipe.services.classifier.model import classifier_fn
    from visionpipe.settings import ClassifierSettings

    size = image_size or (224 if device.startswith("cuda") else 96)
    fn = classifier_fn(load_model("classification", spec, RANDOM), ClassifierSettings(), ExecutorSettings(), device)
    return LiveModel(spec, fn, (3, size, size), f"{spec} (random weights) through the classifier stage's fn: top-5")


def raw_throughput(fn: Callable[[torch.Tensor], Any], shape: tuple[int, ...], mb: int, device: str) -> float:
    """Items/s of back-to-back max-batch forwards with the input already on the device (compute phase only)."""
    dev = TorchDevice(fn, shape, torch.uint8, mb, device=device, overlap=False)
    item = dev.example_item()
    dev.run([item] * mb)
    times = [dev.run([item] * mb)[1]["compute"] for _ in range(RAW_REPEATS)]
    return mb / min(times)


async def _drive(executor: BatchExecutor, trace: Trace, item: np.ndarray) -> SimResult:
    n = len(trace.arrivals_ns)
    arrivals = np.zeros(n, dtype=np.int64)
    done = np.full(n, -1, dtype=np.int64)
    sizes: list[int] = []
    busy = [0.0]

    def on_batch(size: int, timings: dict[str, float]) -> None:
        sizes.append(size)
        busy[0] += timings["compute"]

    executor.on_batch = on_batch
    t0 = time.monotonic_ns()

    async def one(i: int) -> None:
        arrivals[i] = time.monotonic_ns() - t0
        await executor.submit(item)
        done[i] = time.monotonic_ns() - t0

    tasks = []
    for i, at in enumerate(trace.arrivals_ns.tolist()):
        delay = (t0 + at - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return SimResult(arrivals, done, [], sizes, busy[0], executor.scheduler.slo_ns)


async def _run_one(
    m: LiveModel,
    device: str,
    mech: tuple[str, bool, bool],
    policy: BatchPolicy,
    settings: ExecutorSettings,
    trace: Trace,
) -> tuple[SimResult, dict[str, float]]:
    _, overlap, pinned = mech
    dev = TorchDevice(
        m.fn, m.item_shape, torch.uint8, settings.max_batch, device=device, overlap=overlap, pinned=pinned
    )
    executor = BatchExecutor(dev, policy, settings)
    await executor.start()
    try:
        res = await _drive(executor, trace, dev.example_item())
    finally:
        await executor.stop()
    mb = settings.max_batch
    return res, {p: round(executor.model.phases[p].line(mb) * 1e3, 3) for p in PHASES}


def _row(
    name: str, params: dict[str, Any], mech: tuple[str, bool, bool], trace: Trace, load: float, res: SimResult
) -> dict[str, Any]:
    head = {"policy": name, "params": ",".join(f"{k}={v}" for k, v in params.items())}
    return {**head, "mechanics": mech[0], "overlap": mech[1], "pinned": mech[2], **measured(res, trace, load)}


def _plan(
    raw: float, duration: float, seed: int, quick: bool, parts: tuple[str, ...] = ("mechanics", "policies")
) -> list[tuple[str, Trace, float]]:
    """(section, trace, load): mechanics at rising load and saturation, then policies at two loads and a burst."""
    plan: list[tuple[str, Trace, float]] = []
    if "mechanics" in parts:
        mech_loads = MECH_LOADS[1:2] if quick else MECH_LOADS
        plan += [("mechanics", poisson(raw * f, duration, seed), f) for f in mech_loads]
        sat = poisson(raw * SATURATION_LOAD, duration, seed)
        plan.append(("mechanics", Trace("saturation", sat.rate, sat.arrivals_ns, sat.rate_at), SATURATION_LOAD))
    if "policies" in parts:
        loads = POLICY_LOADS[:1] if quick else POLICY_LOADS
        plan += [("policies", poisson(raw * f, duration, seed), f) for f in loads]
        if not quick:
            plan.append(("policies", burst(raw * 0.5, max(duration, 1.5), seed), 0.5))
    return plan


def run_live(
    device: str,
    model: str | None,
    slo_ms: float | None,
    max_batch: int | None,
    duration: float,
    image_size: int | None,
    seed: int,
    quick: bool,
    deadline: float | None = None,
    parts: tuple[str, ...] = ("mechanics", "policies"),
    pageable_grid: bool = True,
) -> dict[str, Any]:
    """The side-by-sides in ``parts`` for one model; ``deadline`` (monotonic s): stop adding runs past it, and say so.

    ``pageable_grid`` False: serial-pageable runs at saturation only (pinned memory alone), not on the load grid.
    """
    tdev = resolve_device(device)
    cuda = tdev.startswith("cuda")
    m = live_model(model or ("resnet50" if cuda else "mobilenet_v3_small"), tdev, image_size)
    mb = max_batch or (256 if cuda and m.name not in STAGES else 32 if cuda else 8)
    raw = raw_throughput(m.fn, m.item_shape, mb, tdev)
    slo = slo_ms or round(SLO_BATCHES * mb / raw * 1e3, 1)
    settings = ExecutorSettings(slo_ms=slo, max_batch=mb, warmup_repeats=2)
    mechanics = MECHANICS if cuda else MECHANICS[2:]
    best = mechanics[0]
    rows: list[dict[str, Any]] = []
    phases: dict[str, dict[str, float]] = {}
    skipped = 0
    for section, trace, load in _plan(raw, duration, seed, quick, parts):
        for name, params, make, mech in _runs(section, trace, mechanics, mb, pageable_grid):
            if deadline is not None and time.monotonic() > deadline and rows:  # one run at least, always
                skipped += 1
                continue
            res, lines = asyncio.run(_run_one(m, tdev, mech, make(), settings, trace))
            phases.setdefault(mech[0], lines)
            rows.append(_row(name, params, mech, trace, load, res))
    meta = {
        "device": f"{tdev} ({torch.cuda.get_device_name(tdev) if cuda else 'CPU'})",
        "machine": "this host",
        "model": m.describe + f", input uint8 {m.item_shape}",
        "slo_ms": slo,
        "max_batch": mb,
        "raw_throughput": round(raw, 1),
        "phases_ms_at_max_batch": phases,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "duration_s": duration,
        "runs_skipped_for_time": skipped,
    }
    summary = capacity_from_rows(rows, slo)
    return {
        "meta": meta,
        "rows": rows,
        "summary": summary,
        "targets": live_targets(rows, summary, phases, raw, best, parts),
        "adaptive_vs_greedy": adaptive_vs_greedy(rows, best[0]),
    }


Mechanics = tuple[str, bool, bool]  # name, overlap, pinned
Run = tuple[str, dict[str, Any], Callable[[], BatchPolicy], Mechanics]


def _runs(section: str, trace: Trace, mechanics: Sequence[Mechanics], mb: int, pageable_grid: bool) -> list[Run]:
    """(policy, params, factory, mechanics) for one trace: greedy on every mechanics, or the policies on the best."""
    best = mechanics[0]
    if section == "mechanics":  # greedy, every mechanics: the mechanics alone differ
        grid = [mc for mc in mechanics if pageable_grid or mc[0] != "serial-pageable"] or list(mechanics)
        mechs = list(mechanics) if trace.name == "saturation" else grid
        greedy = {"max_batch": mb, "delay_ms": 0.0}
        runs: list[Run] = [("timeout", greedy, partial(TimeoutPolicy, mb, 0.0), mc) for mc in mechs]
        if trace.name == "saturation":
            runs.append(("adaptive", {}, AdaptivePolicy, best))
        return runs
    runs = [("adaptive", {}, AdaptivePolicy, best)]
    return runs + [
        ("timeout", {"max_batch": mb, "delay_ms": d}, partial(TimeoutPolicy, mb, d), best) for d in TIMEOUT_DELAYS_MS
    ]


def capacity_from_rows(rows: list[dict[str, Any]], slo: float) -> list[dict[str, Any]]:
    """Live runs cannot afford a bisection: capacity is the highest tested rate whose p99 met the SLO."""
    out: dict[tuple[str, str, str], float] = {}
    for r in rows:
        key = (r["policy"], r["params"], r["mechanics"])
        ok = r["trace"] == "poisson" and r["p99_ms"] is not None and r["p99_ms"] <= slo
        out[key] = max(out.get(key, 0.0), r["rate"] if ok else 0.0)
    return [
        {"policy": p, "params": q, "mechanics": m, "overlap": m == "overlapped", "capacity": c}
        for (p, q, m), c in out.items()
    ]


def live_targets(
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    phases: dict[str, dict[str, float]],
    raw: float,
    best: tuple[str, bool, bool],
    parts: tuple[str, ...] = ("mechanics", "policies"),
) -> list[dict[str, Any]]:
    out = _mechanics_targets(rows, summary, phases.get("overlapped", {})) if "mechanics" in parts else []
    mech = best[0]
    if "mechanics" in parts:
        out.append(
            target(
                "saturation: adaptive throughput ÷ raw max-batch forward",
                ratio(_saturated(rows, "adaptive", mech), raw),
                ">=",
                SATURATION,
                f"raw forward {raw:.1f}/s, timed in this process before the runs",
            )
        )
    if "policies" in parts:
        out.append(_policy_target(rows, mech))
    return out


def _saturated(rows: list[dict[str, Any]], policy: str, mech: str) -> float | None:
    r = next((r for r in rows if (r["policy"], r["mechanics"], r["trace"]) == (policy, mech, "saturation")), None)
    return None if r is None else r["throughput"]


def _mechanics_targets(
    rows: list[dict[str, Any]], summary: list[dict[str, Any]], ov: dict[str, float]
) -> list[dict[str, Any]]:
    """Overlap alone and pinned memory alone, at saturation and as capacity at the SLO (greedy batching)."""
    if not ov:
        return []

    def cap(mech: str) -> float:
        return max((s["capacity"] for s in summary if (s["policy"], s["mechanics"]) == ("timeout", mech)), default=0.0)

    lead = (ov["stage"] + ov["upload"]) / max(ov["compute"], 1e-9)
    share = f"staging + upload = {lead:.0%} of compute at max batch (fitted)"
    th = OVERLAP_TARGET if lead >= OVERLAP_HEAVY else 1.0
    sat_ov, sat_pinned = _saturated(rows, "timeout", "overlapped"), _saturated(rows, "timeout", "serial-pinned")
    return [
        target(
            "mechanics: saturation throughput overlapped ÷ serial-pinned (overlap alone)",
            ratio(sat_ov, sat_pinned),
            ">=",
            th,
            share,
        ),
        target(
            "mechanics: capacity at the p99 SLO overlapped ÷ serial-pinned (load grid)",
            ratio(cap("overlapped"), cap("serial-pinned")),
            ">=",
            th,
            share,
        ),
        target(
            "mechanics: saturation throughput serial-pinned ÷ serial-pageable (pinned alone)",
            ratio(sat_pinned, _saturated(rows, "timeout", "serial-pageable")),
            ">=",
            1.0,
        ),
    ]


def _policy_target(rows: list[dict[str, Any]], mech: str) -> dict[str, Any]:
    """Adaptive's p99 against the best swept timeout's, at the worst of the loads and the burst."""
    worst: tuple[float | None, str] = (None, "no policy rows")
    for r in rows:
        if (r["policy"], r["mechanics"], r["params"]) != ("adaptive", mech, "") or r["trace"] == "saturation":
            continue
        key = "peak_p99_ms" if r["trace"] == "burst" else "p99_ms"
        timeouts = [
            t[key]
            for t in rows
            if t["policy"] == "timeout"
            and t["mechanics"] == mech
            and (t["trace"], t["load"]) == (r["trace"], r["load"])
            and t[key] is not None
        ]
        got = ratio(r[key], min(timeouts) if timeouts else None)
        if got[0] is None or worst[0] is None or got[0] > worst[0]:
            worst = got
            if got[0] is None:
                break
    return target("policy: adaptive p99 ÷ best swept timeout p99, worst of the loads and the burst", worst, "<=", 1.05)
