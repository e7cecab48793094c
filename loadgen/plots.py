"""Every picture the benchmarks draw, with one matplotlib set-up.

* a broker comparison's three: latency CDF, latency over time, where the time goes;
* the executor benchmark's one PNG: p99 vs load per policy, and batch size
  and latency over time on the burst.

Matplotlib with the Agg backend (files only, no display), imported when a
report is written so that the load generator itself starts without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visionpipe.breakdown import CATEGORIES

CDF_PNG = "latency_cdf.png"
TIMELINE_PNG = "latency_over_time.png"
BREAKDOWN_PNG = "breakdown.png"
DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(runs: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Write the PNGs for ``runs`` (``{"label", "summary"}`` dicts); returns their file names."""
    usable = [r for r in runs if r["summary"].get("completed")]
    if not usable:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    names = []
    for name, draw in ((CDF_PNG, _cdf), (TIMELINE_PNG, _timeline), (BREAKDOWN_PNG, _breakdown)):
        fig = draw(plt, usable)
        fig.savefig(out_dir / name, dpi=DPI)
        plt.close(fig)
        names.append(name)
    return names


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis at 1-2-5 steps as plain numbers (200, 500, 1000) and leave the other ticks
    unlabelled; matplotlib's default writes 2×10², 3×10², … which overlap on a short range."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _cdf(plt: Any, runs: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        points = run["summary"]["cdf"]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=run["label"], drawstyle="steps-post")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("end-to-end latency (ms, log scale; from scheduled send)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Latency CDF per broker")
    fig.tight_layout()
    return fig


def _timeline(plt: Any, runs: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        points = run["summary"]["timeline"]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=6, alpha=0.6, label=run["label"])
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("scheduled send time (s from start of the measured run)")
    ax.set_ylabel("end-to-end latency (ms, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Latency over time")
    fig.tight_layout()
    return fig


def _breakdown(plt: Any, runs: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = [r["label"] for r in runs]
    bottoms = [0.0] * len(runs)
    for cat in CATEGORIES:
        values = [max(0.0, r["summary"]["categories_mean_ms"].get(cat, 0.0)) for r in runs]
        ax.bar(labels, values, bottom=bottoms, label=cat)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for i, run in enumerate(runs):
        share = run["summary"].get("non_dnn_share")
        if share is not None:
            ax.annotate(f"non-DNN {share:.0%}", (i, bottoms[i]), ha="center", va="bottom")
    ax.set_ylabel("mean time per request (ms)")
    ax.set_title("Where the time goes, per broker")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


# The executor benchmark.

NS = 1_000_000_000
# Latency over time is the p99 of arrivals in windows of this length: short enough to show a 0.3 s burst.
TIMELINE_WINDOW_S = 0.05


# Line style per mechanics: overlapped solid, serial with pinned memory dashed, plain serial dotted.
MECHANICS_STYLES = (("overlapped", "-"), ("serial-pinned", "--"), ("serial-pageable", ":"))


def best_params(summary: list[dict[str, Any]], policy: str, mechanics: str) -> str | None:
    """The swept baseline's best point: highest capacity, as the targets compare."""
    cands = [s for s in summary if s["policy"] == policy and s["mechanics"] == mechanics]
    return max(cands, key=lambda s: s["capacity"])["params"] if cands else None


def _series(
    rows: list[dict[str, Any]], policy: str, params: str | None, mechanics: str
) -> tuple[list[float], list[float]]:
    pts = [
        (r["load"], r["p99_ms"])
        for r in rows
        if r["trace"] == "poisson"
        and r["policy"] == policy
        and r["mechanics"] == mechanics
        and (params is None or r["params"] == params)
        and r["p99_ms"] is not None
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _p99_over_time(arrivals_ns: np.ndarray, done_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = (done_ns - arrivals_ns) / 1e6
    bins = (arrivals_ns // int(TIMELINE_WINDOW_S * NS)).astype(np.int64)
    xs, ys = [], []
    for b in np.unique(bins):
        sel = lat[(bins == b) & (done_ns >= 0)]
        if len(sel):
            xs.append(b * TIMELINE_WINDOW_S)
            ys.append(float(np.percentile(sel, 99)))
    return np.asarray(xs), np.asarray(ys)


def plot_executor(
    path: Path,
    title: str,
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    slo_ms: float,
    burst_runs: dict[tuple[str, str, str], Any],
    burst_window: tuple[float, float] | None,
) -> None:
    plt = _pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    _p99_vs_load(axes[0], rows, summary, slo_ms)
    _on_the_burst(axes[1:], summary, slo_ms, burst_runs, burst_window)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _p99_vs_load(ax: Any, rows: list[dict[str, Any]], summary: list[dict[str, Any]], slo_ms: float) -> None:
    # Adaptive last and thickest: it often coincides with greedy (Triton delay 0) and must stay visible.
    shown: list[tuple[str, str | None]] = [("slack", None), ("aimd", None)]
    shown += [
        ("fixed", best_params(summary, "fixed", "overlapped")),
        ("timeout", best_params(summary, "timeout", "overlapped")),
    ]
    shown.append(("adaptive", ""))
    for i, (policy, params) in enumerate(shown):
        color = f"C{i}"
        for mechanics, style in MECHANICS_STYLES:
            xs, ys = _series(rows, policy, params if params is not None else None, mechanics)
            label = f"{policy} {params or ''} {mechanics}".replace("  ", " ")
            wide = policy == "adaptive"
            ax.plot(xs, ys, style, color=color, marker="o", ms=4 if wide else 3, lw=2.5 if wide else 1.2, label=label)
    ax.axhline(slo_ms, color="k", lw=0.8, ls=":", label="SLO")
    ax.set(xlabel="offered load (fraction of ideal capacity)", ylabel="p99 latency (ms)", yscale="log")
    ax.set_ylim(top=slo_ms * 20)
    ax.set_title("p99 vs load (best swept point of each baseline)")
    ax.legend(fontsize=6)


def _on_the_burst(
    axes: Any,
    summary: list[dict[str, Any]],
    slo_ms: float,
    burst_runs: dict[tuple[str, str, str], Any],
    burst_window: tuple[float, float] | None,
) -> None:
    """Batch sizes and p99 over time through the 2x burst, for the best-swept baselines and adaptive."""
    burst_cfgs = [
        ("timeout", best_params(summary, "timeout", "overlapped")),
        ("fixed", best_params(summary, "fixed", "overlapped")),
        ("adaptive", ""),
    ]
    for i, (policy, params) in enumerate(burst_cfgs):
        for mechanics, style in MECHANICS_STYLES:
            res = burst_runs.get((policy, params or "", mechanics))
            if res is None:
                continue
            label = f"{policy} {params or ''} {mechanics}"
            t = np.asarray(res.batch_dispatch_ns) / NS
            lw = 1.6 if policy == "adaptive" else 0.8
            axes[0].plot(t, res.batch_sizes, style, color=f"C{i}", lw=lw, label=label)
            tx, ty = _p99_over_time(res.arrivals_ns, res.done_ns)
            axes[1].plot(tx, ty, style, color=f"C{i}", lw=lw * 1.2, label=label)
    for ax in axes:
        if burst_window:
            ax.axvspan(*burst_window, color="orange", alpha=0.15, label="2x burst")
        ax.set_xlabel("time (s)")
        ax.legend(fontsize=6)
    axes[0].set(ylabel="batch size", title="batch size on the 2x burst (50% -> 100% load for 0.3 s)")
    axes[1].axhline(slo_ms, color="k", lw=0.8, ls=":")
    axes[1].set(
        ylabel=f"p99 latency per {int(TIMELINE_WINDOW_S * 1e3)} ms of arrivals (ms)",
        yscale="log",
        title="latency on the 2x burst",
    )
