"""What ``visionpipe bench pipeline`` makes of its rounds: the ceiling, the ratios, the goals, and a Markdown table.

Per workload and round: the best plain script (the best of its variants in that round); the **ceiling**, the
images/s the cores could give if every core did whole images' work on one thread with no overhead — the cores
over the single-thread core-time per image (decode, detector, crops, classifier: the one-thread plain script's
CPU time per image, measured in that round); ``visionpipe run`` embedded; and the stages as separate
``visionpipe serve`` processes over Redis. Ratios are taken within a round only: the machine's load moves every
case of a round alike, not the rounds alike. On a machine shared with other jobs no case gets every core, so
the ceiling (CPU time) is out of everyone's reach there; ``embedded_cpu_efficiency`` (single-thread CPU time
per image over the pipeline's) is what embedded ÷ ceiling comes to once the cores are the pipeline's alone.
"""

from __future__ import annotations

import statistics
from typing import Any

PLAIN = "plain script"
ONE_THREAD = f"{PLAIN}, resize, 1 thread"
EMBEDDED = "visionpipe run"
SERVICES = "services over redis"
# The goals: (ratio, bound, which rounds) — a bound every round must meet, or the median's.
EMBEDDED_OF_CEILING = 0.95
EMBEDDED_OF_PLAIN = 1.0
EMBEDDED_OF_PLAIN_MEDIAN = 1.05
SERVICES_OF_PLAIN = 0.9


def derive(cases: dict[str, dict[str, Any]], workload: str, cores: int) -> dict[str, Any]:
    """One round of one workload: best plain, ceiling, the pipeline's two forms, and their ratios."""
    plain = {n: c for n, c in cases.items() if n.startswith(f"{workload}: {PLAIN}")}
    best_name = max(plain, key=lambda n: plain[n]["images_per_s"])
    best = plain[best_name]["images_per_s"]
    one = cases[f"{workload}: {ONE_THREAD}"]
    ceiling = cores * 1e3 / one["cpu_ms_per_image"]
    out: dict[str, Any] = {
        "load1": cases[best_name]["load1_before"],
        "best_plain": best,
        "best_plain_variant": best_name.removeprefix(f"{workload}: {PLAIN}").lstrip(", ") or "roi_align",
        "ceiling": round(ceiling, 3),
        "ceiling_by_wall_time": round(cores * one["images_per_s"], 3),  # one thread's images/s on each core
        "single_thread_ms_per_image": one.get("ms_per_image", {}),
        "crops_per_image": one.get("crops_per_image"),
        "ceiling_over_plain": round(ceiling / best, 3),
    }
    for key, name in (("embedded", EMBEDDED), ("services", SERVICES)):
        case = cases.get(f"{workload}: {name}")
        if case is not None:
            out[key] = case["images_per_s"]
            out[f"{key}_over_plain"] = round(case["images_per_s"] / best, 3)
            out[f"{key}_over_ceiling"] = round(case["images_per_s"] / ceiling, 3)
            out[f"{key}_cpu_efficiency"] = round(one["cpu_ms_per_image"] / case["cpu_ms_per_image"], 3)
    return out


def goals(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Each goal: the figures it is judged on and whether it is met."""
    out: dict[str, Any] = {}
    if all("embedded" in r for r in per_round):
        of_ceiling = [r["embedded_over_ceiling"] for r in per_round]
        of_plain = [r["embedded_over_plain"] for r in per_round]
        allowed = [r["embedded_over_plain"] for r in per_round if r["ceiling_over_plain"] >= EMBEDDED_OF_PLAIN_MEDIAN]
        out["embedded ≥ 0.95× ceiling, every round"] = _goal(of_ceiling, min(of_ceiling) >= EMBEDDED_OF_CEILING)
        out["embedded ≥ 1.0× best plain, every round"] = _goal(of_plain, min(of_plain) >= EMBEDDED_OF_PLAIN)
        median = statistics.median(allowed) if allowed else None
        out["embedded ≥ 1.05× best plain, median of the rounds whose ceiling allows it"] = {
            "rounds": allowed,
            "median": median,
            "met": None if median is None else median >= EMBEDDED_OF_PLAIN_MEDIAN,
        }
    if all("services" in r for r in per_round):
        of_plain = [r["services_over_plain"] for r in per_round]
        out["services over Redis ≥ 0.9× best plain, every round"] = _goal(of_plain, min(of_plain) >= SERVICES_OF_PLAIN)
    return out


def _goal(figures: list[float], met: bool) -> dict[str, Any]:
    return {"rounds": figures, "median": round(statistics.median(figures), 3), "met": met}


def markdown(doc: dict[str, Any]) -> str:
    """A short report: per workload a row per round, then the goals."""
    lines = [f"# visionpipe bench pipeline — {doc['when']}, {doc['cpus']} cores", "", f"`{doc['command']}`", ""]
    lines += ["images/s; ceiling = cores ÷ single-thread CPU ms per image; CPU eff. = that ÷ embedded's CPU ms", ""]
    for workload, summary in doc["summary"]["workloads"].items():
        lines += [f"## {workload} ({doc['inputs'][workload]})", ""]
        lines += [
            "| round | load | best plain | ceiling | embedded | ÷ ceiling | CPU eff. | ÷ plain | services | ÷ plain |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for i, r in enumerate(summary["rounds"], 1):
            lines.append(
                f"| {i} | {r['load1']} | {r['best_plain']:.2f} ({r['best_plain_variant']}) | {r['ceiling']:.2f} "
                f"| {r.get('embedded', 0):.2f} | {r.get('embedded_over_ceiling', 0):.2f} "
                f"| {r.get('embedded_cpu_efficiency', 0):.2f} | {r.get('embedded_over_plain', 0):.2f} "
                f"| {r.get('services', 0):.2f} "
                f"| {r.get('services_over_plain', 0):.2f} |"
            )
        lines += ["", "| goal | rounds | median | met |", "| --- | --- | ---: | --- |"]
        for goal, g in summary["goals"].items():
            met = {True: "yes", False: "**no**", None: "n/a (no round's ceiling allows it)"}[g["met"]]
            lines.append(f"| {goal} | {', '.join(map(str, g['rounds']))} | {g['median']} | {met} |")
        lines += ["", *_details(summary), ""]
    return "\n".join(lines) + "\n"


def _details(summary: dict[str, Any]) -> list[str]:
    """Per case medians: CPU ms/image, threads running, busy shares, bytes copied or on the wire."""
    lines = ["| case | images/s | CPU ms/image | threads running | busy share | bytes/image |", *["| --- " * 6 + "|"]]
    for name, c in summary["cases"].items():
        busy = ", ".join(f"{k} {v:.0%}" for k, v in (c.get("busy_share") or {}).items())
        lines.append(
            f"| {name} | {c['images_per_s']:.2f} | {c.get('cpu_ms_per_image')} | {c.get('threads_running', '')} "
            f"| {busy} | {c.get('bytes', '')} |"
        )
    return lines
