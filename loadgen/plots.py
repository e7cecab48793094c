"""The comparison's three pictures: latency CDF, latency over time, where the time goes.

Matplotlib with the Agg backend (files only, no display), imported when a
report is written so that the load generator itself starts without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionpipe.loadgen.recorder import CATEGORIES

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
