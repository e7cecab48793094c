"""The simulated side-by-side: every policy × mechanics × every trace, and the targets in ``targets.py``.

Mechanics are three, so that the two gains are reported apart: *overlapped*
(two streams, pinned buffers), *serial-pinned* (one stream, pinned buffers:
what overlap alone adds is overlapped ÷ this) and *serial-pageable* (a plain
PyTorch server: what pinned memory alone adds is serial-pinned ÷ this).
Baselines are swept, not picked: fixed batch sizes (powers of two up to the
maximum) and Triton max-queue-delay values including 0; every point is a row
and the best one is what the targets compare against. All runs see the same
arrival traces (common random numbers), so differences are the policies'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from visionpipe.executor.policy import AdaptivePolicy, AimdPolicy, BatchPolicy, FixedPolicy, SlackPolicy, TimeoutPolicy
from visionpipe.executor.sim_device import CostModel
from visionpipe.loadgen.bench.simulate import SimResult, simulate
from visionpipe.loadgen.bench.traces import Trace, burst, poisson, ramp

LOAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TRITON_DELAYS_MS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
# Bisection steps for capacity: 2^-8 of the search range, ~0.5% of capacity.
CAPACITY_STEPS = 8
# Search capacity up to this multiple of the ideal overlapped throughput (max batch / its compute time).
CAPACITY_CEILING = 1.1
BURST_LOAD = 0.5  # the scheduling paper's burst: 400 pic/s doubled to 800 for 0.3 s, half load doubling to full
RAMP_LOW, RAMP_HIGH = 0.1, 0.9
# A run with this many maximum batches queued cannot meet any SLO the benchmark uses: stop simulating it.
OVERLOAD_BATCHES = 20
SATURATION_LOAD = 1.5  # offered load for the saturation row: the queue never empties, batches are full


# (name, overlap, pinned): the three mechanics every policy runs on.
MECHANICS = (("overlapped", True, True), ("serial-pinned", False, True), ("serial-pageable", False, False))


def mechanics_name(overlap: bool, pinned: bool) -> str:
    return "overlapped" if overlap else ("serial-pinned" if pinned else "serial-pageable")


@dataclass(frozen=True)
class Config:
    policy: str
    params: dict[str, Any]
    overlap: bool
    make: Callable[[], BatchPolicy]
    pinned: bool = True

    @property
    def mechanics(self) -> str:
        return mechanics_name(self.overlap, self.pinned)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.policy, _params_str(self.params), self.mechanics


def _params_str(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def configs(max_batch: int, quick: bool = False) -> Iterator[Config]:
    sizes = [b for b in (2**i for i in range(12)) if b <= max_batch]
    delays: tuple[float, ...] = TRITON_DELAYS_MS
    if quick:
        sizes, delays = [max(1, max_batch // 8), max_batch // 2], (0.0, 2.0)
    for _, overlap, pinned in MECHANICS:
        yield Config("adaptive", {}, overlap, AdaptivePolicy, pinned)
        if not quick:  # the paper's rule literally: on an idle device wait the whole fill time b/λ
            yield Config("adaptive", {"idle_fill": None}, overlap, partial(AdaptivePolicy, None), pinned)
        yield Config("slack", {}, overlap, SlackPolicy, pinned)
        aimd = partial(AimdPolicy, max_batch, start=max_batch)
        yield Config("aimd", {"max_batch": max_batch}, overlap, aimd, pinned)
        for b in sizes:
            yield Config("fixed", {"batch": b}, overlap, partial(FixedPolicy, b), pinned)
        for d in delays:
            params = {"max_batch": max_batch, "delay_ms": d}
            yield Config("timeout", params, overlap, partial(TimeoutPolicy, max_batch, d), pinned)


def ideal_capacity(cost: CostModel, max_batch: int) -> float:
    """Requests/s of back-to-back maximum batches with uploads hidden: the reference for load fractions."""
    return max_batch / (cost.compute.ms(max_batch) / 1e3)


class Suite:
    def __init__(
        self, cost: CostModel, *, slo_ms: float, max_batch: int, duration_s: float, seed: int = 0, quick: bool = False
    ) -> None:
        self.cost, self.slo_ms, self.max_batch = cost, slo_ms, max_batch
        self.duration_s, self.seed, self.quick = duration_s, seed, quick
        self.ref = ideal_capacity(cost, max_batch)
        self.traces = [poisson(self.ref * f, duration_s, seed) for f in LOAD_FRACTIONS]
        self.burst = burst(self.ref * BURST_LOAD, max(duration_s, 1.5), seed)
        self.ramp = ramp(self.ref * RAMP_LOW, self.ref * RAMP_HIGH, max(duration_s, 2.0), seed)
        sat = poisson(self.ref * SATURATION_LOAD, duration_s, seed)
        self.saturation = Trace("saturation", sat.rate, sat.arrivals_ns, sat.rate_at)
        self.burst_runs: dict[tuple[str, str, str], SimResult] = {}

    def run(self, cfg: Config, trace: Trace) -> SimResult:
        return simulate(
            cfg.make(),
            self.cost,
            trace.arrivals_ns,
            overlap=cfg.overlap,
            pinned=cfg.pinned,
            max_batch=self.max_batch,
            slo_ms=self.slo_ms,
            seed=self.seed,
            max_queue=OVERLOAD_BATCHES * self.max_batch,
        )

    def row(self, cfg: Config, trace: Trace, res: SimResult, load: float | None) -> dict[str, Any]:
        head = {"policy": cfg.policy, "params": _params_str(cfg.params), "overlap": cfg.overlap, "pinned": cfg.pinned}
        return {**head, "mechanics": cfg.mechanics, **measured(res, trace, load)}

    def capacity(self, cfg: Config) -> float:
        """Highest Poisson rate whose p99 stays within the SLO, by bisection (same seed at every rate)."""
        lo, hi = 0.0, self.ref * CAPACITY_CEILING
        if self._meets(cfg, hi):
            return hi
        for _ in range(CAPACITY_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self._meets(cfg, mid) else (lo, mid)
        return lo

    def _meets(self, cfg: Config, rate: float) -> bool:
        if rate <= 0:
            return True
        res = self.run(cfg, poisson(rate, self.duration_s, self.seed))
        p99 = res.summary()["p99_ms"]
        return math.isfinite(p99) and p99 <= self.slo_ms

    def run_config(self, cfg: Config) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows = [self.row(cfg, t, self.run(cfg, t), f) for t, f in zip(self.traces, LOAD_FRACTIONS, strict=True)]
        res = self.run(cfg, self.burst)
        self.burst_runs[cfg.key] = res
        rows.append(self.row(cfg, self.burst, res, BURST_LOAD))
        rows.append(self.row(cfg, self.ramp, self.run(cfg, self.ramp), None))
        rows.append(self.row(cfg, self.saturation, self.run(cfg, self.saturation), SATURATION_LOAD))
        summary = {
            "policy": cfg.policy,
            "params": _params_str(cfg.params),
            "overlap": cfg.overlap,
            "pinned": cfg.pinned,
            "mechanics": cfg.mechanics,
        }
        summary["capacity"] = round(self.capacity(cfg), 1)
        return rows, summary


def measured(res: SimResult, trace: Trace, load: float | None) -> dict[str, Any]:
    """What one run of a trace measured, as a row of the benchmark's table (simulated or live)."""
    s = res.summary()
    row = {
        "trace": trace.name,
        "rate": round(trace.rate, 1),
        "load": load,
        "throughput": round(s["throughput"], 1),
        "p50_ms": _num(s["p50_ms"]),
        "p99_ms": _num(s["p99_ms"]),
        "slo_attainment": round(s["slo_attainment"], 4),
        "mean_batch": round(s["mean_batch"], 2),
        "gpu_busy_s": round(res.gpu_busy_s, 4),
        "gpu_busy_ms_per_request": round(1e3 * res.gpu_busy_s / max(len(res.arrivals_ns), 1), 5),
    }
    if trace.name == "burst":
        row["peak_p99_ms"] = _num(res.peak_p99_ms())
    return row


def _num(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None


def adaptive_vs_greedy(rows: list[dict[str, Any]], mechanics: str = "overlapped") -> list[dict[str, Any]]:
    """Where adaptive (and the paper's literal idle wait) differs from greedy: batch sizes, GPU time, latency.

    One row per trace and load, side by side from the same run; ``differs`` says whether any of the
    compared numbers moved by more than 2% (simulation noise is deterministic, so any change is the policy's).
    """

    def pick(policy: str, params_ok: Callable[[str], bool]) -> dict[tuple[str, Any], dict[str, Any]]:
        return {
            (r["trace"], r["load"]): r
            for r in rows
            if r["policy"] == policy and r["mechanics"] == mechanics and params_ok(r["params"])
        }

    greedy = pick("timeout", lambda p: p.endswith("delay_ms=0.0"))
    variants = {"adaptive": pick("adaptive", lambda p: p == ""), "adaptive-seed": pick("adaptive", lambda p: p != "")}
    keys = ("mean_batch", "gpu_busy_ms_per_request", "p50_ms", "p99_ms", "peak_p99_ms")
    out = []
    for key, g in greedy.items():
        row: dict[str, Any] = {"trace": key[0], "load": key[1]}
        for k in keys:
            row[f"greedy_{k}"] = g.get(k)
        moved = False
        for name, rows_of in variants.items():
            a = rows_of.get(key)
            if a is None:
                continue
            for k in keys:
                row[f"{name}_{k}"] = a.get(k)
                ga, aa = g.get(k), a.get(k)
                moved |= (ga is None) != (aa is None) or (ga is not None and abs(aa - ga) > 0.02 * max(abs(ga), 1e-9))
        row["differs"] = moved
        out.append(row)
    return out
