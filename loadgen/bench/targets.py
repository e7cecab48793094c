"""The executor's targets, computed from a benchmark's rows and summary so that every report states them the same way.

Each target is a ratio measured side by side in one run. A p99 of a run
that never drained is infinite (``None`` in the rows). A ratio against such
a baseline says nothing: it is reported as "n/a" (``met`` is None, with the
reason), never as 0.0 and met. A ratio whose own run never drained is not
met.
"""

from __future__ import annotations

import math
from typing import Any

# Mechanics thresholds depend on how much of the batch time the work before compute (host staging + upload) is.
UPLOAD_HEAVY = 0.30
# Overlap alone (overlapped ÷ serial-pinned) where staging + upload ≥ 30% of compute: the overlap target.
MECH_OVERLAP_HEAVY, MECH_OVERLAP_LIGHT = 1.10, 1.0
# Overlap and pinned memory together (overlapped ÷ serial-pageable): the mechanics target.
MECH_CAPACITY_HEAVY, MECH_CAPACITY_LIGHT = 1.15, 1.03
MECH_PINNED = 1.0  # pinned alone never loses
MECH_BURST_P99, MECH_P99_90 = 0.70, 0.75
POLICY_VS_TRITON_CAPACITY, POLICY_VS_TRITON_P99 = 0.98, 1.05
POLICY_VS_FIXED_P99_60, POLICY_VS_FIXED_CAPACITY = 0.5, 1.05
SLACK_BUSY = 0.6
SATURATION = 0.90
POLICY_LOADS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NEVER_DRAINED = "the baseline never drained (its p99 is unbounded), so the ratio says nothing"
OVERLAPPED, SERIAL_PINNED, SERIAL_PAGEABLE = "overlapped", "serial-pinned", "serial-pageable"


def _inf(x: float | None) -> float:
    return math.inf if x is None else float(x)


def ratio(a: float | None, b: float | None) -> tuple[float | None, str]:
    """a ÷ b, or (None, why) when either side is unbounded or b is zero."""
    fa, fb = _inf(a), _inf(b)
    if math.isinf(fb):
        return None, NEVER_DRAINED
    if fb == 0:
        return None, "the baseline is zero"
    if math.isinf(fa):
        return None, "the compared run never drained"
    return fa / fb, ""


class Table:
    def __init__(self, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
        self.rows, self.summary = rows, summary

    def row(self, policy: str, mech: str, trace: str, load: float | None = None, params: str | None = None) -> Any:
        for r in self.rows:
            if (
                (r["policy"], r["mechanics"], r["trace"]) == (policy, mech, trace)
                and (load is None or r["load"] == load)
                and (params is None or r["params"] == params)
            ):
                return r
        return None

    def capacity(self, policy: str, mech: str, params: str | None = None) -> float:
        caps = [
            s["capacity"]
            for s in self.summary
            if (s["policy"], s["mechanics"]) == (policy, mech) and (params is None or s["params"] == params)
        ]
        return max(caps, default=0.0)

    def best_p99(self, policy: str, mech: str, load: float) -> float | None:
        vals = [
            _inf(r["p99_ms"])
            for r in self.rows
            if (r["policy"], r["mechanics"], r["trace"], r["load"]) == (policy, mech, "poisson", load)
        ]
        best = min(vals, default=math.inf)
        return None if math.isinf(best) else best


def target(name: str, value: tuple[float | None, str], op: str, threshold: float, detail: str = "") -> dict[str, Any]:
    """One target row; ``met`` is None ("n/a") when the baseline never drained."""
    v, why = value
    met: bool | None = (
        None if why == NEVER_DRAINED else v is not None and (v >= threshold if op == ">=" else v <= threshold)
    )
    return {
        "target": name,
        "value": None if v is None else round(v, 3),
        "op": op,
        "threshold": threshold,
        "met": met,
        "detail": "; ".join(x for x in (detail, why) if x),
    }


def _mechanics(t: Table, rows: list[dict[str, Any]], lead_share: float, pageable_share: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    greedy = [r["params"] for r in rows if r["policy"] == "timeout" and r["params"].endswith("delay_ms=0.0")]
    for policy, params in (("adaptive", ""), ("timeout", greedy[0] if greedy else None)):
        label = "adaptive" if policy == "adaptive" else "greedy (timeout, delay 0)"
        cap = {m: t.capacity(policy, m, params) for m in (OVERLAPPED, SERIAL_PINNED, SERIAL_PAGEABLE)}
        heavy = lead_share >= UPLOAD_HEAVY
        share = f"staging + pinned upload = {lead_share:.0%} of compute at max batch"
        out.append(
            target(
                f"mechanics/{label}: capacity overlapped ÷ serial-pinned (overlap alone)",
                ratio(cap[OVERLAPPED], cap[SERIAL_PINNED]),
                ">=",
                MECH_OVERLAP_HEAVY if heavy else MECH_OVERLAP_LIGHT,
                share,
            )
        )
        out.append(
            target(
                f"mechanics/{label}: capacity serial-pinned ÷ serial-pageable (pinned memory alone)",
                ratio(cap[SERIAL_PINNED], cap[SERIAL_PAGEABLE]),
                ">=",
                MECH_PINNED,
            )
        )
        heavy_pageable = pageable_share >= UPLOAD_HEAVY
        out.append(
            target(
                f"mechanics/{label}: capacity overlapped ÷ serial-pageable (both)",
                ratio(cap[OVERLAPPED], cap[SERIAL_PAGEABLE]),
                ">=",
                MECH_CAPACITY_HEAVY if heavy_pageable else MECH_CAPACITY_LIGHT,
                f"staging + pageable upload = {pageable_share:.0%} of compute at max batch",
            )
        )
        ov, se = t.row(policy, OVERLAPPED, "burst", params=params), t.row(policy, SERIAL_PINNED, "burst", params=params)
        out.append(
            target(
                f"mechanics/{label}: peak p99 on the 2x burst, overlapped ÷ serial-pinned",
                ratio(ov and ov["peak_p99_ms"], se and se["peak_p99_ms"]),
                "<=",
                MECH_BURST_P99,
            )
        )
        ov = t.row(policy, OVERLAPPED, "poisson", 0.9, params)
        se = t.row(policy, SERIAL_PINNED, "poisson", 0.9, params)
        out.append(
            target(
                f"mechanics/{label}: p99 at 90% load, overlapped ÷ serial-pinned",
                ratio(ov and ov["p99_ms"], se and se["p99_ms"]),
                "<=",
                MECH_P99_90,
            )
        )
    return out


def _policy(t: Table) -> list[dict[str, Any]]:
    out = [
        target(
            "policy: adaptive capacity ÷ best Triton-style",
            ratio(t.capacity("adaptive", OVERLAPPED, ""), t.capacity("timeout", OVERLAPPED)),
            ">=",
            POLICY_VS_TRITON_CAPACITY,
        )
    ]
    by_load = []
    for load in POLICY_LOADS:
        a = t.row("adaptive", OVERLAPPED, "poisson", load, "")
        by_load.append((ratio(a and a["p99_ms"], t.best_p99("timeout", OVERLAPPED, load)), load))
    unbounded = [(r, lo) for r, lo in by_load if r[0] is None]
    worst, at = unbounded[0] if unbounded else max(by_load, key=lambda x: x[0][0] or 0.0)
    out.append(
        target(
            "policy: adaptive p99 ÷ best Triton-style, worst of 10-90% load",
            worst,
            "<=",
            POLICY_VS_TRITON_P99,
            f"worst at load {at}",
        )
    )
    a60 = t.row("adaptive", OVERLAPPED, "poisson", 0.6, "")
    out.append(
        target(
            "policy: adaptive p99 ÷ best fixed batch at 60% load",
            ratio(a60 and a60["p99_ms"], t.best_p99("fixed", OVERLAPPED, 0.6)),
            "<=",
            POLICY_VS_FIXED_P99_60,
        )
    )
    out.append(
        target(
            "policy: adaptive capacity ÷ best fixed batch",
            ratio(t.capacity("adaptive", OVERLAPPED, ""), t.capacity("fixed", OVERLAPPED)),
            ">=",
            POLICY_VS_FIXED_CAPACITY,
        )
    )
    return out


def evaluate(
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    *,
    lead_share: float,
    pageable_share: float,
    slo_ms: float,
    raw: float,
) -> list[dict[str, Any]]:
    """The executor's targets as rows: name, value, comparison, threshold, met (None: n/a), detail.

    ``lead_share``: (host staging + pinned upload) ÷ compute at the maximum batch, what overlap can hide;
    ``pageable_share``: the same with the pageable upload; ``raw``: throughput of back-to-back maximum
    batches (the saturation reference).
    """
    t = Table(rows, summary)
    out = _mechanics(t, rows, lead_share, pageable_share) + _policy(t)
    worst_busy, worst_p99 = 0.0, 0.0
    greedy = [r["params"] for r in rows if r["policy"] == "timeout" and r["params"].endswith("delay_ms=0.0")]
    for load in (lo for lo in POLICY_LOADS if lo <= 0.6):
        sl = t.row("slack", OVERLAPPED, "poisson", load)
        g = t.row("timeout", OVERLAPPED, "poisson", load, greedy[0] if greedy else None)
        if sl and g:
            worst_busy = max(worst_busy, sl["gpu_busy_ms_per_request"] / g["gpu_busy_ms_per_request"])
            worst_p99 = max(worst_p99, _inf(sl["p99_ms"]))
    out.append(target("slack: GPU busy per request ÷ greedy, worst of 10-60% load", (worst_busy, ""), "<=", SLACK_BUSY))
    out.append(target("slack: p99 ÷ SLO, worst of 10-60% load", ratio(worst_p99, slo_ms), "<=", 1.0))
    sat = t.row("adaptive", OVERLAPPED, "saturation", params="")
    out.append(
        target(
            "saturation: adaptive throughput ÷ raw max-batch forward throughput",
            ratio(sat and sat["throughput"], raw),
            ">=",
            SATURATION,
        )
    )
    return out


def met_label(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")
