"""Issue 4's targets, computed from a benchmark's rows and summary so that every report states them the same way.

Each target is a ratio measured side by side in one run. ``None`` stands for
"no finite value" (a p99 of a run that never drained); a ratio against such
a baseline counts as met when the compared run is finite.
"""

from __future__ import annotations

import math
from typing import Any

# Mechanics thresholds depend on how much of the batch time the (pageable) upload is.
UPLOAD_HEAVY = 0.30
MECH_CAPACITY_HEAVY, MECH_CAPACITY_LIGHT = 1.15, 1.03
MECH_BURST_P99, MECH_P99_90 = 0.70, 0.75
POLICY_VS_TRITON_CAPACITY, POLICY_VS_TRITON_P99 = 0.98, 1.05
POLICY_VS_FIXED_P99_60, POLICY_VS_FIXED_CAPACITY = 0.5, 1.05
SLACK_BUSY = 0.6
SATURATION = 0.90
POLICY_LOADS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _inf(x: float | None) -> float:
    return math.inf if x is None else float(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    fa, fb = _inf(a), _inf(b)
    if math.isinf(fb):
        return 0.0 if math.isfinite(fa) else None
    if fb == 0:
        return None
    return fa / fb if math.isfinite(fa) else None


class Table:
    def __init__(self, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
        self.rows, self.summary = rows, summary

    def row(self, policy: str, overlap: bool, trace: str, load: float | None = None, params: str | None = None) -> Any:
        for r in self.rows:
            if (
                (r["policy"], r["overlap"], r["trace"]) == (policy, overlap, trace)
                and (load is None or r["load"] == load)
                and (params is None or r["params"] == params)
            ):
                return r
        return None

    def capacity(self, policy: str, overlap: bool, params: str | None = None) -> float:
        caps = [
            s["capacity"]
            for s in self.summary
            if (s["policy"], s["overlap"]) == (policy, overlap) and (params is None or s["params"] == params)
        ]
        return max(caps, default=0.0)

    def best_p99(self, policy: str, overlap: bool, load: float) -> float | None:
        vals = [
            _inf(r["p99_ms"])
            for r in self.rows
            if (r["policy"], r["overlap"], r["trace"], r["load"]) == (policy, overlap, "poisson", load)
        ]
        best = min(vals, default=math.inf)
        return None if math.isinf(best) else best


def _target(name: str, value: float | None, op: str, threshold: float, detail: str = "") -> dict[str, Any]:
    met = value is not None and (value >= threshold if op == ">=" else value <= threshold)
    return {
        "target": name,
        "value": None if value is None else round(value, 3),
        "op": op,
        "threshold": threshold,
        "met": met,
        "detail": detail,
    }


def evaluate(
    rows: list[dict[str, Any]], summary: list[dict[str, Any]], *, upload_share: float, slo_ms: float, raw: float
) -> list[dict[str, Any]]:
    """Targets of issue 4 as rows: name, value, comparison, threshold, met.

    ``upload_share``: pageable upload ÷ compute at the maximum batch (picks the mechanics threshold);
    ``raw``: throughput of back-to-back maximum batches (the saturation reference).
    """
    t = Table(rows, summary)
    out: list[dict[str, Any]] = []
    cap_th = MECH_CAPACITY_HEAVY if upload_share >= UPLOAD_HEAVY else MECH_CAPACITY_LIGHT
    greedy = [r["params"] for r in rows if r["policy"] == "timeout" and r["params"].endswith("delay_ms=0.0")]
    tparams = greedy[0] if greedy else None
    for policy, params in (("adaptive", None), ("timeout", tparams)):
        label = "adaptive" if policy == "adaptive" else "greedy (timeout, delay 0)"
        cap = _ratio(t.capacity(policy, True, params), t.capacity(policy, False, params))
        out.append(
            _target(
                f"mechanics/{label}: capacity overlapped ÷ serial",
                cap,
                ">=",
                cap_th,
                f"pageable upload = {upload_share:.0%} of compute at max batch",
            )
        )
        ov, se = t.row(policy, True, "burst", params=params), t.row(policy, False, "burst", params=params)
        out.append(
            _target(
                f"mechanics/{label}: peak p99 on the 2x burst, overlapped ÷ serial",
                _ratio(ov and ov["peak_p99_ms"], se and se["peak_p99_ms"]),
                "<=",
                MECH_BURST_P99,
            )
        )
        ov, se = t.row(policy, True, "poisson", 0.9, params), t.row(policy, False, "poisson", 0.9, params)
        out.append(
            _target(
                f"mechanics/{label}: p99 at 90% load, overlapped ÷ serial",
                _ratio(ov and ov["p99_ms"], se and se["p99_ms"]),
                "<=",
                MECH_P99_90,
            )
        )
    out.append(
        _target(
            "policy: adaptive capacity ÷ best Triton-style",
            _ratio(t.capacity("adaptive", True), t.capacity("timeout", True)),
            ">=",
            POLICY_VS_TRITON_CAPACITY,
        )
    )
    worst, at = 0.0, None
    for load in POLICY_LOADS:
        a = t.row("adaptive", True, "poisson", load)
        r = _ratio(a and a["p99_ms"], t.best_p99("timeout", True, load))
        if r is None or r > worst:
            worst, at = (math.inf if r is None else r), load
    out.append(
        _target(
            "policy: adaptive p99 ÷ best Triton-style, worst of 10-90% load",
            None if math.isinf(worst) else worst,
            "<=",
            POLICY_VS_TRITON_P99,
            f"worst at load {at}",
        )
    )
    a60 = t.row("adaptive", True, "poisson", 0.6)
    out.append(
        _target(
            "policy: adaptive p99 ÷ best fixed batch at 60% load",
            _ratio(a60 and a60["p99_ms"], t.best_p99("fixed", True, 0.6)),
            "<=",
            POLICY_VS_FIXED_P99_60,
        )
    )
    out.append(
        _target(
            "policy: adaptive capacity ÷ best fixed batch",
            _ratio(t.capacity("adaptive", True), t.capacity("fixed", True)),
            ">=",
            POLICY_VS_FIXED_CAPACITY,
        )
    )
    worst_busy, worst_p99 = 0.0, 0.0
    for load in (lo for lo in POLICY_LOADS if lo <= 0.6):
        sl, g = t.row("slack", True, "poisson", load), t.row("timeout", True, "poisson", load, tparams)
        if sl and g:
            worst_busy = max(worst_busy, sl["gpu_busy_ms_per_request"] / g["gpu_busy_ms_per_request"])
            worst_p99 = max(worst_p99, _inf(sl["p99_ms"]))
    out.append(_target("slack: GPU busy per request ÷ greedy, worst of 10-60% load", worst_busy, "<=", SLACK_BUSY))
    out.append(_target("slack: p99 ÷ SLO, worst of 10-60% load", worst_p99 / slo_ms, "<=", 1.0))
    sat = t.row("adaptive", True, "saturation")
    out.append(
        _target(
            "saturation: adaptive throughput ÷ raw max-batch forward throughput",
            _ratio(sat and sat["throughput"], raw),
            ">=",
            SATURATION,
        )
    )
    return out
