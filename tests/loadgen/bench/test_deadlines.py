"""The deadline simulator: three stages, the three ways to treat a deadline, and the benchmark's report.

Short loads on the H100 pipeline cost model; the benchmark itself (``visionpipe bench deadlines``) runs longer
ones and writes the figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from visionpipe.loadgen.bench.deadline_loads import capacity, fanout_pmf, h100_pipeline, loads
from visionpipe.loadgen.bench.deadline_report import summarize
from visionpipe.loadgen.bench.deadline_sim import REJECTED, UNANSWERED, simulate_pipeline
from visionpipe.loadgen.bench.deadlines import bench_deadlines, propagated_mode, triton_modes

DURATION_S = 6.0  # long enough for a queue past capacity to outgrow the deadline


def _by_name(name: str) -> object:
    cost = h100_pipeline()
    return next(load for load in loads(capacity(cost), DURATION_S, seed=3) if load.name == name)


def test_fanout_is_heavy_tailed_with_the_asked_mean() -> None:
    for mean in (2.0, 15.0):
        pmf = fanout_pmf(mean)
        assert len(pmf) == 21 and abs((np.arange(21) * pmf).sum() - mean) < 1e-6
    assert fanout_pmf(2.0)[10:].sum() > 0.03, "a tail beyond ten crops, not a geometric one"


def test_past_capacity_propagated_deadlines_keep_goodput_where_per_stage_delays_collapse() -> None:
    cost = h100_pipeline()
    load = _by_name("poisson-110%")
    triton = next(m for m in triton_modes(cost, (2_000,), quick=True) if m.params["detector_delay_ms"] == 10.0)
    a = summarize(triton, load, simulate_pipeline(cost, triton, load))  # type: ignore[arg-type]
    c = summarize(propagated_mode(), load, simulate_pipeline(cost, propagated_mode(), load))  # type: ignore[arg-type]
    assert c["goodput"] > 2 * a["goodput"], (a, c)
    assert c["late_silent"] == 0 and c["unanswered"] == 0 and c["answered_in_time"] > 0.99
    assert c["wasted_device_share"] < 0.01 < a["wasted_device_share"]
    assert a["late_silent"] > 0, "the baseline returns late results as if they were on time"


def test_below_capacity_every_mode_meets_every_deadline() -> None:
    cost = h100_pipeline()
    load = _by_name("poisson-50%")
    for mode in (*triton_modes(cost, (2_000,), quick=True)[:1], propagated_mode()):
        outcome = simulate_pipeline(cost, mode, load)  # type: ignore[arg-type]
        assert not np.isin(outcome.code, (REJECTED, UNANSWERED)).any()
        assert summarize(mode, load, outcome)["attainment"] == 1.0  # type: ignore[arg-type]


def test_the_benchmark_writes_rows_goals_and_timelines(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    result = CliRunner().invoke(bench_deadlines, ["--quick", "--duration", "0.5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {r["mode"] for r in doc["best"]} == {"a", "b", "c"}
    assert {r["load"] for r in doc["best"]} >= {"poisson-50%", "poisson-110%", "burst", "ramp", "fanout-shift"}
    assert len(doc["goals"]) == 5 and all(g["met"] in (True, False, None) for g in doc["goals"])
    assert set(doc["timelines"]["burst"]) == {"a", "b", "c"}
