"""The comparison report: ``results.json`` for machines, ``report.md`` plus PNGs for people.

The Markdown puts brokers side by side on the same rows, and ends with a
verdict per metric (who won, by what ratio), since a ratio measured in one
session on one host is the only kind of broker claim that transfers. A run
the pipeline could not keep up with (``saturation.py``) is said at the top
and nothing is ranked: its latencies measure a growing queue, not a broker.
With ``--find-capacity`` the report starts with each broker's capacity.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visionpipe.breakdown import CATEGORIES, SEGMENTS
from visionpipe.loadgen.compare import broker_label
from visionpipe.loadgen.plots import BREAKDOWN_PNG, CDF_PNG, TIMELINE_PNG, write_plots
from visionpipe.loadgen.runner import RunResult
from visionpipe.loadgen.saturation import saturation

SECTIONS = ("Setup", "Summary", "Latency per segment", "Where the time goes", "Resources", "Verdict", "Plots")
PERCENTILE_ROWS = ("p50", "p90", "p99", "p99.9", "max")
BATCH_ROWS = (("consumed_messages", "messages per consume call"), ("device_batch_size", "items per device batch"))
# Closer than this, two brokers are not ranked on a metric: run-to-run noise on one host is of this order.
TIE_RATIO = 1.05
# (row label, getter, lower is better); a getter returns None where a run has no value.
Metric = tuple[str, Callable[[dict[str, Any]], float | None], bool]


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "processor": platform.processor() or platform.machine(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # the report does not need torch; it only says what the stages could use
        info["torch"] = None
    return info


def run_doc(r: RunResult, rounds: int) -> dict[str, Any]:
    name = broker_label(r.broker)
    return {
        "label": name + (f" #{r.round}" if rounds > 1 else ""),
        "broker_label": name,
        "round": r.round,
        "broker": r.broker,
        "elapsed_s": r.elapsed_s,
        "started_wall_ns": r.started_wall_ns,
        "summary": r.summary,
        "resources": r.resources,
        "notes": r.notes,
        "saturated": saturation(r.summary, open_loop=r.spec.pattern != "closed"),
    }


def _lat(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda run: run["summary"].get("latency_ms", {}).get(key)


def _hops(run: dict[str, Any]) -> float | None:
    return run["summary"].get("categories_mean_ms", {}).get("broker hops")


def _res(proc: str, key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda run: (run["resources"].get(proc) or {}).get(key)


METRICS: list[Metric] = [
    ("throughput (req/s)", lambda run: run["summary"].get("throughput_rps"), False),
    *[(f"latency {k} (ms)", _lat(k), True) for k in PERCENTILE_ROWS],
    ("broker hops, mean per request (ms)", _hops, True),
    ("non-DNN share of end-to-end", lambda run: run["summary"].get("non_dnn_share"), True),
    ("broker CPU (% of a core)", _res("broker", "cpu_percent"), True),
    ("broker peak RSS (MB)", _res("broker", "rss_max_mb"), True),
]


def verdict(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: the best broker and how many times better it is than the worst (≥ 1).

    With several rounds a broker's value is the median over its rounds."""
    out = []
    for name, get, lower in METRICS:
        per_broker: dict[str, list[float]] = {}
        for r in runs:
            value = get(r)
            if value is not None:
                per_broker.setdefault(r.get("broker_label", r["label"]), []).append(value)
        values = {k: statistics.median(v) for k, v in per_broker.items()}
        if len(values) < 2:
            continue
        best = (min if lower else max)(values, key=lambda k: values[k])
        worst = (max if lower else min)(values, key=lambda k: values[k])
        hi, lo = (values[worst], values[best]) if lower else (values[best], values[worst])
        ratio = hi / lo if lo > 0 else None  # always >= 1: how many times better the winner is
        # A few per cent between two runs of one session is nobody's win.
        winner = best if ratio is None or ratio >= TIE_RATIO else None
        out.append(
            {"metric": name, "winner": winner, "loser": worst, "ratio": ratio, "values": values}
            | {"lower_is_better": lower}
        )
    return out


def capacity_verdict(capacity: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdict's capacity row: the broker with the higher knee, and by how much."""
    knees = {name: c["knee_rps"] for name, c in capacity["brokers"].items() if c["knee_rps"]}
    if len(knees) < 2:
        return []
    best, worst = max(knees, key=lambda k: knees[k]), min(knees, key=lambda k: knees[k])
    ratio = knees[best] / knees[worst]
    return [
        {"metric": "capacity (req/s)", "winner": best, "loser": worst, "ratio": ratio, "values": knees}
        | {"lower_is_better": False}
    ]


def write_report(
    results: list[RunResult], out_dir: Path, setup: dict[str, Any], capacity: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write results.json, report.md and the plots into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = max((r.round for r in results), default=1)
    first_seen = {url: i for i, url in reversed(list(enumerate(r.broker for r in results)))}
    ordered = sorted(results, key=lambda r: (first_seen[r.broker], r.round))  # each broker's rounds side by side
    runs = [run_doc(r, rounds) for r in ordered]
    doc = {
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host_info(),
        "setup": setup,
        "runs": runs,
        "saturated": {r["label"]: r["saturated"] for r in runs if r["saturated"]},
        "capacity": capacity,
    }
    # Saturated runs are not ranked: which queue grew faster says nothing about the brokers.
    doc["verdict"] = [] if doc["saturated"] else [*(capacity_verdict(capacity) if capacity else []), *verdict(runs)]
    plots = write_plots(runs, out_dir)
    doc["plots"] = plots
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str))
    paths["markdown"].write_text(markdown(doc))
    for name in plots:
        paths[name] = out_dir / name
    return paths


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(doc: dict[str, Any]) -> str:
    runs = doc["runs"]
    labels = [r["label"] for r in runs]
    lines = [f"# Broker comparison: {' vs '.join(labels)}", "", f"Generated {doc['generated_utc']}.", ""]
    lines += busy_lines(doc["host"]) + saturated_lines(doc) + capacity_lines(doc)
    lines += _setup(doc) + _summary(runs, labels) + _segments(runs, labels) + _where_time_goes(runs, labels)
    lines += _resources(runs) + _verdict(doc)
    lines += ["## Plots", ""]
    titles = {CDF_PNG: "Latency CDF", TIMELINE_PNG: "Latency over time", BREAKDOWN_PNG: "Per-stage breakdown"}
    lines += [f"![{titles[p]}]({p})" for p in doc.get("plots", [])] or ["No completed requests: no plots."]
    return "\n".join(lines) + "\n"


def _setup(doc: dict[str, Any]) -> list[str]:
    runs, setup, host = doc["runs"], doc["setup"], doc["host"]
    lines = ["## Setup", ""]
    lines += [
        f"- host: {host['platform']}, {host['cpus']} CPUs, Python {host['python']}, torch {host.get('torch')}, "
        f"GPU: {host.get('cuda') or 'none'}"
    ]
    lines += [f"- {k}: {v}" for k, v in setup.items()]
    lines += [f"- {r['label']}: `{r['broker']}` (stream prefix `{r['summary'].get('prefix', '?')}`)" for r in runs]
    lines += [
        "- latency runs from each request's *scheduled* send time to its result being read (open loop: no "
        "coordinated omission); percentiles from HdrHistogram (3 significant digits)",
        "",
    ]
    return lines


def _summary(runs: list[dict[str, Any]], labels: list[str]) -> list[str]:
    rows = [
        ["sent", *(_fmt(r["summary"].get("sent")) for r in runs)],
        ["completed", *(_fmt(r["summary"].get("completed")) for r in runs)],
        ["lost", *(_fmt(r["summary"].get("lost")) for r in runs)],
        ["duplicated", *(_fmt(r["summary"].get("duplicates")) for r in runs)],
        ["failed (dead letter / rejected)", *(_fmt(r["summary"].get("failed")) for r in runs)],
        ["offered (req/s)", *(_fmt(r["summary"].get("offered_rps")) for r in runs)],
        ["throughput (req/s)", *(_fmt(r["summary"].get("throughput_rps")) for r in runs)],
        *[[f"latency {k} (ms)", *(_fmt(_lat(k)(r)) for r in runs)] for k in (*PERCENTILE_ROWS[:4], "mean", "max")],
        ["objects per image", *(_fmt(r["summary"].get("objects_per_image")) for r in runs)],
    ]
    lines = ["## Summary", "", *_table(["", *labels], rows), ""]
    for r in runs:
        if "error" in r["summary"]:
            lines += [f"**{r['label']} failed:** {r['summary']['error']}", ""]
    return lines


def _segments(runs: list[dict[str, Any]], labels: list[str]) -> list[str]:
    lines = [
        "## Latency per segment",
        "",
        "Mean / p99 in ms per request, from the stages' envelope stamps. A hop is one broker transfer "
        "(publisher's `published` → consumer's `dequeued`; the first from ingress `enqueued`, the last to "
        "the load generator's read): it includes time waiting in the stream while the consumer is busy, "
        "so under overload the hops grow with the backlog. Queueing is waiting inside a stage for its batch; "
        "compute is decode or the DNN; post is post-processing and publish.",
        "",
    ]
    seg_rows = []
    for seg in SEGMENTS:
        cells = []
        for r in runs:
            s = r["summary"].get("segments_ms", {}).get(seg)
            cells.append(f"{_fmt(s['mean'])} / {_fmt(s['p99'])}" if s else "–")
        if any(c != "–" for c in cells):
            seg_rows.append([seg, *cells])
    return [*lines, *_table(["segment", *labels], seg_rows), ""]


def _where_time_goes(runs: list[dict[str, Any]], labels: list[str]) -> list[str]:
    lines = [
        "## Where the time goes",
        "",
        "Mean ms per request by kind; the non-DNN share is everything except "
        "detector and classifier compute, over end-to-end: the part of a request's time that the broker and the "
        "stages' own handling decide, rather than the models.",
        "",
    ]
    cat_rows = [[c, *(_fmt(r["summary"].get("categories_mean_ms", {}).get(c)) for r in runs)] for c in CATEGORIES]
    share = [
        _fmt(r["summary"].get("non_dnn_share") * 100, 1) + " %"
        if r["summary"].get("non_dnn_share") is not None
        else "–"
        for r in runs
    ]
    return [*lines, *_table(["", *labels], [*cat_rows, ["**non-DNN share**", *share]]), ""]


def _verdict(doc: dict[str, Any]) -> list[str]:
    runs = doc["runs"]
    lines = ["## Verdict", ""]
    if doc["saturated"]:
        lines += ["Not ranked: the pipeline was saturated (see the top of this report).", ""]
    if any(r["round"] > 1 for r in runs):
        lines += [
            "Brokers ran in ABBA order over several rounds; each value is the broker's median over its rounds.",
            "",
        ]
    verdict_rows = [
        [
            v["metric"],
            v["winner"] or f"neither (within {TIE_RATIO - 1:.0%})",
            f"{v['ratio']:.2f}×" if v["ratio"] else "–",
            ", ".join(f"{k} {_fmt(x)}" for k, x in v["values"].items()),
        ]
        for v in doc["verdict"]
    ]
    if verdict_rows:
        lines += [*_table(["metric", "better", "by", "values"], verdict_rows), ""]
    elif not doc["saturated"]:
        lines += ["One broker only (or one that failed): nothing to compare.", ""]
    notes = [f"- {r['label']}: {n}" for r in runs for n in r["notes"]]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return lines


def _resources(runs: list[dict[str, Any]]) -> list[str]:
    procs = ["broker", "decode", "detector", "classifier"]
    rows = []
    for proc in procs:
        cpu = [_fmt(_res(proc, "cpu_percent")(r), 1) for r in runs]
        rss = [_fmt(_res(proc, "rss_max_mb")(r), 1) for r in runs]
        if any(c != "–" for c in cpu + rss):
            rows.append([f"{proc} CPU (% of a core)", *cpu])
            rows.append([f"{proc} peak RSS (MB)", *rss])
    for stage in procs[1:]:
        for metric, what in BATCH_ROWS:
            cells = [_fmt(r["summary"].get("batch_means", {}).get(stage, {}).get(metric), 1) for r in runs]
            if any(c != "–" for c in cells):
                rows.append([f"{stage} {what}", *cells])
    lines = [
        "## Resources",
        "",
        "Sampled every 0.5 s during the measured window; CPU 100 % = one core busy. Batch "
        "sizes are means over the window from the stages' /metrics histograms.",
        "",
    ]
    if rows:
        lines += [*_table(["", *[r["label"] for r in runs]], rows), ""]
    else:
        lines += ["Not measurable: no broker or stage process visible on this host.", ""]
    return lines


def busy_lines(host: dict[str, Any]) -> list[str]:
    """A warning when other work kept the host's cores busy: it moves every figure more than a broker does."""
    load, cpus = host.get("load_average"), host.get("cpus") or 1
    if load is None or load <= cpus:
        return []
    return [
        f"**The host was busy**: load average {load:.1f} on {cpus} CPUs when this report was written. Other work "
        "moves these figures, a capacity most of all, by more than the brokers differ: repeat the run on a quiet "
        "machine before reading a ranking from it.",
        "",
    ]


def saturated_lines(doc: dict[str, Any]) -> list[str]:
    """The report's first words when a run could not keep up: what showed it, and what to do instead."""
    if not doc["saturated"]:
        return []
    lines = [
        "**Saturated: no broker is ranked.** In these runs the pipeline did not keep up with the load offered: "
        "requests waited in a queue that grew while the run lasted, so their latencies measure that queue "
        "rather than the broker:",
        "",
    ]
    lines += [f"- {label}: {info['why']}" for label, info in doc["saturated"].items()]
    lines += [
        "",
        "Run again at a rate the pipeline keeps up with (a lower `--rate`), or with `--find-capacity`, which "
        "steps the rate up to what each broker keeps up with and compares them there.",
        "",
    ]
    return lines


def capacity_lines(doc: dict[str, Any]) -> list[str]:
    """``--find-capacity``: each broker's steps, its capacity, and the rate the rest of the report compares at."""
    capacity = doc.get("capacity")
    if not capacity:
        return []
    lines = [
        "## Capacity",
        "",
        f"Each broker's pipeline was offered {capacity['pattern']} load, each step {capacity['step']:g}× the "
        f"last, {capacity['duration_s']:g} s a step; its capacity is the highest rate it kept up with "
        "(no sign of saturation); the true figure lies between it and the next step.",
        "",
    ]
    rows = []
    for name, c in capacity["brokers"].items():
        steps = ", ".join(
            f"{s['rate']:.3g} → {s['achieved_rps']:.2f}" + (" (saturated)" if s["saturated"] else "")
            for s in c["steps"]
        )
        rows.append([name, steps, f"{c['knee_rps']:.3g}" if c["knee_rps"] else "below the lowest step"])
    lines += [*_table(["broker", "offered → completed req/s", "capacity (req/s)"], rows), ""]
    at = capacity.get("compared_at_rps")
    lines += [
        f"The tables below compare the brokers at {at:.3g} req/s, the highest rate every broker kept up with."
        if at
        else "No rate was kept up with by every broker: the tables below are of saturated runs.",
        "",
    ]
    return lines
