"""The deadline benchmark's figures: one row per run, the goals, a timeline of the burst and the fan-out shift, a PNG.

* goodput: results within their deadline, per second of load;
* attainment: the share of admitted requests (not refused at the front door) answered with a result in time
  (and, beside it, of every request offered, refused ones included);
* answered in time: results in time plus early ``deadline_exceeded`` answers, over admitted;
* late and silent: results after their deadline that nobody flagged (the baselines return them as results);
* p99 of on-time results, and the device time spent on requests that missed anyway (share of all device time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visionpipe.loadgen.bench.deadline_sim import ON_TIME, OUTCOMES, REJECTED, Load, Mode, Outcome

ATTAINMENT = 0.99
GOODPUT_RATIO = 1.25
ANSWERED_IN_TIME = 0.99
WASTED_SHARE = 0.01
TIMELINE_BIN_S = 0.1
# Loads shown beside the goals' but not judged by them (the goals name their loads).
EXTRA_LOADS = ("mixed-deadlines",)
MODE_NAMES = {"a": "(a) Triton per-stage delay", "b": "(b) static split", "c": "(c) propagated"}


def summarize(mode: Mode, load: Load, outcome: Outcome) -> dict[str, Any]:
    code = outcome.code
    counts = {name: int((code == i).sum()) for i, name in enumerate(OUTCOMES)}
    admitted = len(code) - counts["rejected"]
    on_time = code == ON_TIME
    latency = (outcome.answer_ns[on_time] - load.arrivals_ns[on_time]) / 1e6
    missed = ~on_time & (code != REJECTED)
    silent = 0 if mode.judge_at_end else counts["late_result"]
    return {
        "mode": mode.name,
        "params": mode.params,
        "load": load.name,
        "fraction": load.offered_fraction,
        "offered": len(code),
        "admitted": admitted,
        **counts,
        "goodput": round(counts["on_time"] / load.duration_s, 2),
        "attainment": round(counts["on_time"] / admitted, 5) if admitted else 0.0,
        "on_time_of_offered": round(counts["on_time"] / len(code), 5) if len(code) else 0.0,
        "answered_in_time": round((counts["on_time"] + counts["early"]) / admitted, 5) if admitted else 0.0,
        "late_silent": silent,
        "p99_on_time_ms": round(float(np.percentile(latency, 99)), 2) if len(latency) else None,
        "wasted_device_share": round(float(outcome.device_s[missed].sum()) / outcome.busy_s, 5)
        if outcome.busy_s
        else 0.0,
        "device_s": round(outcome.busy_s, 3),
    }


def timeline(load: Load, outcome: Outcome) -> dict[str, list[float]]:
    """Per TIMELINE_BIN_S of arrival time: requests a second by how they ended."""
    bins = (load.arrivals_ns // int(TIMELINE_BIN_S * 1e9)).astype(np.int64)
    n = int(bins.max()) + 1 if len(bins) else 0
    out: dict[str, list[float]] = {"t_s": [round(i * TIMELINE_BIN_S, 2) for i in range(n)]}
    for i, name in enumerate(OUTCOMES):
        counts = np.bincount(bins[outcome.code == i], minlength=n)
        out[name] = [round(float(c) / TIMELINE_BIN_S, 1) for c in counts]
    return out


def _best(rows: list[dict[str, Any]], load: str, modes: tuple[str, ...]) -> dict[str, Any] | None:
    found = [r for r in rows if r["load"] == load and r["mode"] in modes]
    return max(found, key=lambda r: (r["goodput"], r["attainment"]), default=None)


def _goal(name: str, value: Any, threshold: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"goal": name, "value": value, "threshold": threshold, "met": met, "note": note}


def evaluate(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The four deadline goals, from the best row of each mode at each load."""
    poisson = sorted({(r["fraction"], r["load"]) for r in best if r["load"].startswith("poisson")})
    goals = []
    held = []
    for load in dict.fromkeys(r["load"] for r in best if r["load"] not in EXTRA_LOADS):
        base, c = _best(best, load, ("a", "b")), _best(best, load, ("c",))
        if base is not None and c is not None and base["attainment"] >= ATTAINMENT:
            held.append((load, c["attainment"]))
    worst = min(held, key=lambda h: h[1], default=None)
    goals.append(
        _goal(
            "wherever the best of (a)/(b) attains >= 99 %, (c) does too (lowest (c) attainment there)",
            None if worst is None else f"{worst[1]:.4f} at {worst[0]}",
            f">= {ATTAINMENT}",
            None if worst is None else worst[1] >= ATTAINMENT,
        )
    )
    goals.append(_first_miss(best, [load for _, load in poisson]))
    for load in ("burst", "fanout-shift"):
        c = _best(best, load, ("c",))
        if c is None:
            continue
        ok = c["answered_in_time"] >= ANSWERED_IN_TIME and c["late_silent"] == 0
        value = f"{c['answered_in_time']:.4f} answered in time, {c['late_silent']} late and silent"
        goals.append(_goal(f"{load}: (c) answers on time or early", value, f">= {ANSWERED_IN_TIME}, 0 silent", ok))
    wasted = max((r for r in best if r["mode"] == "c"), key=lambda r: r["wasted_device_share"], default=None)
    if wasted is not None:
        share = wasted["wasted_device_share"]
        goals.append(
            _goal(
                "(c) device time on requests that missed anyway (worst load)",
                f"{share:.4f} at {wasted['load']}",
                f"<= {WASTED_SHARE}",
                share <= WASTED_SHARE,
            )
        )
    return goals


def _first_miss(best: list[dict[str, Any]], poisson: list[str]) -> dict[str, Any]:
    name = "(c) goodput at the first load where the best of (a)/(b) falls below 99 %"
    for load in poisson:
        base, c = _best(best, load, ("a", "b")), _best(best, load, ("c",))
        if base is None or c is None or base["attainment"] >= ATTAINMENT:
            continue
        ratio = c["goodput"] / base["goodput"] if base["goodput"] else float("inf")
        value = (
            f"{ratio:.3f}x at {load} ({c['goodput']:.1f} vs {base['goodput']:.1f}/s, best of (a)/(b): {base['mode']})"
        )
        return _goal(name, value, f">= {GOODPUT_RATIO}", ratio >= GOODPUT_RATIO)
    return _goal(name, None, f">= {GOODPUT_RATIO}", None, "the best of (a)/(b) never fell below 99 %")


def short_params(params: dict[str, Any]) -> str:
    """A run's settings in a few characters: delays, dropping, the watermark."""
    parts = []
    if "detector_delay_ms" in params:
        parts.append(f"delay {params['detector_delay_ms']:g}/{params['classifier_delay_ms']:g} ms")
    if params.get("drop"):
        parts.append("drop")
    parts.append(f"wm {params.get('watermark')}")
    return ", ".join(parts)


def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    deadline = doc["meta"]["deadline_ms"]
    table = Table(title=f"best of each mode per load (deadline {deadline:g} ms; mixed: 150/300/600 ms)")
    for col in ("load", "mode", "goodput/s", "attainment", "in time", "p99 ms", "late silent", "wasted", "params"):
        table.add_column(col)
    for r in doc["best"]:
        table.add_row(
            r["load"],
            r["mode"],
            f"{r['goodput']:.1f}",
            f"{r['attainment']:.4f}",
            f"{r['answered_in_time']:.4f}",
            str(r["p99_on_time_ms"]),
            str(r["late_silent"]),
            f"{r['wasted_device_share']:.4f}",
            short_params(r["params"]),
        )
    console.print(table)
    for key, title in (
        ("goals", "goals"),
        ("goals_default_watermark", "the same with the default front-door watermark"),
    ):
        goals = Table(title=title)
        for col in ("goal", "value", "threshold", "met"):
            goals.add_column(col)
        for g in doc.get(key, []):
            met = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
            goals.add_row(g["goal"], str(g["value"]), g["threshold"], met)
        console.print(goals)


def plot(path: Path, doc: dict[str, Any]) -> None:
    """Goodput and attainment vs load per mode (best of each; dashed: the default watermark), and two timelines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    for key, style in (("best", "-"), ("best_default_watermark", "--")):
        _versus_load(axes[0], [r for r in doc.get(key, []) if r["load"].startswith("poisson")], style)
    axes[0][0].set(xlabel="offered load, % of capacity", ylabel="results within the deadline per s", title="goodput")
    axes[0][1].set(xlabel="offered load, % of capacity", ylabel="share of admitted on time", title="attainment")
    axes[0][1].axhline(ATTAINMENT, color="grey", linestyle=":")
    for ax, load in zip(axes[1], ("ramp", "mixed-deadlines"), strict=True):
        for i, (mode, series) in enumerate(doc["timelines"].get(load, {}).items()):
            late = np.add(series["late_result"], series["late_answer"])
            ax.plot(series["t_s"], series["on_time"], color=f"C{i}", label=f"{MODE_NAMES[mode]}: on time")
            ax.plot(series["t_s"], late, color=f"C{i}", linestyle="--", label="late")
            ax.plot(series["t_s"], series["early"], color=f"C{i}", linestyle=":", label="answered early")
        ax.set(xlabel="arrival time, s", ylabel="requests/s", title=f"{load}: how requests ended, by arrival (best)")
    for ax in axes.flat:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    meta = doc["meta"]
    fig.suptitle(
        f"end-to-end deadlines, sim H100 pipeline, deadline {meta['deadline_ms']:g} ms (dashed: default watermark)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _versus_load(axes: Any, rows: list[dict[str, Any]], style: str) -> None:
    for i, (mode, label) in enumerate(MODE_NAMES.items()):
        pts = sorted((r["fraction"] * 100, r["goodput"], r["attainment"]) for r in rows if r["mode"] == mode)
        if pts:
            x, good, att = zip(*pts, strict=True)
            shown = label if style == "-" else None
            axes[0].plot(x, good, marker="o", color=f"C{i}", linestyle=style, label=shown)
            axes[1].plot(x, att, marker="o", color=f"C{i}", linestyle=style, label=shown)
