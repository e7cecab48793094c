"""Whether a load run measured the broker or a queue: saturation, said before anything is ranked.

When the pipeline cannot keep up with the rate offered, requests wait in a queue that grows for as long as
the run lasts: every latency then measures how long the run was and how far behind the stages fell, not
what the broker costs, and a "winner" between two such runs is noise. A run is saturated when either sign
shows:

- **results came back far slower than requests were sent**: results per second, from the first result to
  the last, below ``ACHIEVED_SHARE`` of the rate offered (an open-loop run only: a closed loop sends only
  as fast as results come back). Counting from the first result, not the first send, keeps a pipeline that
  keeps up but takes seconds per request from looking slow;
- **latency grew over the run**: the median latency of the last third of the requests (in the order they
  were scheduled) is ``GROWTH`` times that of the first third or more, and longer by ``GROWTH_MIN_MS``
  at least (a few milliseconds of jitter on a fast pipeline is not a queue).
"""

from __future__ import annotations

import statistics
from typing import Any

# Below this share of the offered rate the pipeline is not keeping up: a Poisson run's own jitter and the
# drain after the last send cost a few per cent, not fifteen.
ACHIEVED_SHARE = 0.85
# A queue that grows doubles latency well within a run; a pipeline keeping up stays flat.
GROWTH = 2.0
GROWTH_MIN_MS = 100.0
# Fewer requests than this per third and the medians say little: only the achieved rate is judged.
MIN_PER_THIRD = 3


def saturation(summary: dict[str, Any], open_loop: bool = True) -> dict[str, Any] | None:
    """What shows that this run was saturated (rates, latencies, one sentence), or None when it kept up."""
    if "error" in summary or not summary.get("sent"):
        return None
    achieved, offered = achieved_rps(summary), summary.get("offered_rps") or 0.0
    signs = []
    if open_loop and offered > 0 and achieved < ACHIEVED_SHARE * offered:
        signs.append(f"results came back at {achieved:.2f} req/s, {offered:.2f} offered ({achieved / offered:.1%})")
    first, last = latency_thirds(summary.get("timeline") or [])
    if first is not None and last is not None and last >= GROWTH * first and last - first >= GROWTH_MIN_MS:
        signs.append(f"latency rose from {_ms(first)} in the first third of the run to {_ms(last)} in the last")
    if not signs:
        return None
    return {
        "achieved_rps": achieved,
        "offered_rps": offered,
        "first_third_ms": first,
        "last_third_ms": last,
        "why": "; ".join(signs),
    }


def achieved_rps(summary: dict[str, Any]) -> float:
    """Results per second while they came back: (n - 1) over the time from the first to the last."""
    received = sorted(summary.get("received_at") or [])
    if len(received) < 2 or received[-1] <= received[0]:
        return summary.get("throughput_rps") or 0.0
    return (len(received) - 1) / (received[-1] - received[0])


def latency_thirds(timeline: list[Any]) -> tuple[float | None, float | None]:
    """Median latency (ms) of the first and the last third of the requests, by scheduled send time."""
    ordered = [latency for _, latency in sorted(timeline)]
    third = len(ordered) // 3
    if third < MIN_PER_THIRD:
        return None, None
    return statistics.median(ordered[:third]), statistics.median(ordered[-third:])


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"
