"""``loadgen compare --find-capacity``: step the rate to each broker's knee, then compare them below it.

A comparison at one fixed rate ranks nothing when that rate is above what the pipeline keeps up with
(``saturation.py``). So, per broker, with its stages started once: offer ``--rate``, then ``STEP`` times
more each step while the pipeline keeps up, or ``STEP`` times less while it does not, until the answer
changes. The broker's capacity is the highest rate it kept up with. Every broker steps over the same
rates (``--rate`` × ``STEP``ⁿ), so the rest of the report compares them at the highest rate every broker
kept up with, from runs already made; a broker that was not run at that rate (its steps went another way)
is run there once more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from visionpipe.loadgen.compare import CompareOptions, Pipeline, broker_label, measure, pipeline
from visionpipe.loadgen.runner import RunResult
from visionpipe.loadgen.saturation import achieved_rps, saturation
from visionpipe.settings import Settings

# Each step offers this many times the last: coarse enough to reach a knee in a few steps, fine enough that
# the capacity found is within a third of the true one.
STEP = 1.5
# Steps per broker at most, either way: from 10 req/s, down to 0.6 or up to 170.
MAX_STEPS = 8


@dataclass
class Ladder:
    """One broker's steps: (rate, result, what showed saturation or None)."""

    url: str
    steps: list[tuple[float, RunResult, dict[str, Any] | None]] = field(default_factory=list)

    @property
    def knee_rps(self) -> float | None:
        kept_up = [rate for rate, _, saturated in self.steps if saturated is None]
        return max(kept_up) if kept_up else None

    def at(self, rate: float) -> RunResult | None:
        return next((r for x, r, s in self.steps if _same(x, rate) and s is None), None)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(a, b)


async def _step(ladder: Ladder, p: Pipeline, opts: CompareOptions, rate: float) -> dict[str, Any] | None:
    spec = dataclasses.replace(opts.spec, rate=rate)
    result = await measure(p, opts, spec, f"{broker_label(ladder.url)} @ {rate:g} req/s")
    saturated = saturation(result.summary, open_loop=spec.pattern != "closed")
    ladder.steps.append((rate, result, saturated))
    return saturated


async def climb(base: Settings, url: str, opts: CompareOptions) -> Ladder:
    """Up from ``--rate`` while the pipeline keeps up, or down while it does not; stages started once."""
    ladder = Ladder(url)
    async with pipeline(base, url, opts) as p:
        rate = opts.spec.rate
        first = await _step(ladder, p, opts, rate)
        going = 1 / STEP if first is not None else STEP
        for _ in range(MAX_STEPS - 1):
            rate *= going
            saturated = await _step(ladder, p, opts, rate)
            if (saturated is None) == (going < 1):  # the answer changed: the knee lies between the last two
                break
    for _, result, _ in ladder.steps:
        result.notes.extend(p.notes)
    return ladder


async def find_capacity(base: Settings, opts: CompareOptions) -> tuple[list[RunResult], dict[str, Any]]:
    """Each broker's ladder; then one run per broker at the highest rate all kept up with, for the report."""
    ladders = [await climb(base, url, opts) for url in opts.brokers]
    knees = [k for k in (ladder.knee_rps for ladder in ladders) if k is not None]
    common = min(knees) if len(knees) == len(ladders) else None
    results = []
    for ladder in ladders:
        found = ladder.at(common) if common is not None else None
        if found is None and common is not None:  # its steps went the other way: run it at that rate once
            async with pipeline(base, ladder.url, opts) as p:
                await _step(ladder, p, opts, common)
            found = ladder.steps[-1][1]
        results.append(found if found is not None else ladder.steps[0][1])
    for r in results:
        r.notes.append(f"run at {r.spec.rate:g} req/s, from the capacity search")
    return results, describe(ladders, opts, common)


def describe(ladders: list[Ladder], opts: CompareOptions, common: float | None) -> dict[str, Any]:
    """The capacity search as the report shows it and results.json keeps it."""
    brokers = {}
    for ladder in ladders:
        steps = [
            {
                "rate": rate,
                "achieved_rps": achieved_rps(result.summary),
                "p50_ms": result.summary.get("latency_ms", {}).get("p50"),
                "saturated": saturated is not None,
                "why": saturated["why"] if saturated else None,
            }
            for rate, result, saturated in sorted(ladder.steps, key=lambda s: s[0])
        ]
        brokers[broker_label(ladder.url)] = {"knee_rps": ladder.knee_rps, "steps": steps}
    return {
        "pattern": opts.spec.pattern,
        "step": STEP,
        "duration_s": opts.spec.duration_s,
        "compared_at_rps": common,
        "brokers": brokers,
    }
