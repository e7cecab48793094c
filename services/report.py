"""Splitting a result's end-to-end latency into where the time went, from its per-stage timestamps.

For each stage the envelope carries ``dequeued``, ``batch_start``,
``compute_done`` and ``published`` (wall-clock ns), and ingress ``enqueued``.
The split (paper 002's breakdown, for our pipeline):

* **wait** — from the previous publish to this stage's dequeue: time in the
  broker. Its floor over a run (the fastest any request crossed that hop) is
  reported as the **broker hop**; the excess over the floor as **queueing**.
* **decode / detector / classifier** — ``batch_start`` to ``compute_done`` of
  that stage (for the DNN stages this includes waiting in a forming batch).
* **postprocess** — the rest inside stages: dequeue to batch start
  (validation) and compute done to publish (box mapping, encoding, publish).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from visionpipe.envelope import Envelope, Event
from visionpipe.ingress import INGRESS, STAGES

PARTS = ("queueing", "broker hop", "decode", "detector", "classifier", "postprocess")
RESULTS_HOP = "results"  # the last leg: classifier publish to the collector's read


def stage_times(env: Envelope, received_ns: int | None = None) -> dict[str, float] | None:
    """Per-request seconds: ``wait:<stage>``, ``<stage>`` (compute), ``post:<stage>``, ``total``; None if incomplete."""
    out: dict[str, float] = {}
    prev = env.ts(INGRESS, Event.ENQUEUED)
    if prev is None:
        return None
    start = prev
    for stage in STAGES:
        ts = {e: env.ts(stage, e) for e in (Event.DEQUEUED, Event.BATCH_START, Event.COMPUTE_DONE, Event.PUBLISHED)}
        if any(v is None for v in ts.values()):
            return None
        deq, bs, cd, pub = (
            int(ts[e] or 0) for e in (Event.DEQUEUED, Event.BATCH_START, Event.COMPUTE_DONE, Event.PUBLISHED)
        )
        out[f"wait:{stage}"] = max(0, deq - prev) / 1e9
        out[stage] = max(0, cd - bs) / 1e9
        out[f"post:{stage}"] = (max(0, bs - deq) + max(0, pub - cd)) / 1e9
        prev = pub
    end = received_ns if received_ns is not None else prev
    out[f"wait:{RESULTS_HOP}"] = max(0, end - prev) / 1e9
    out["total"] = max(0, end - start) / 1e9
    return out


@dataclass
class Breakdown:
    """Totals over a run, split into ``PARTS``, plus end-to-end percentiles."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    totals: list[float] = field(default_factory=list)

    @property
    def share(self) -> dict[str, float]:
        whole = sum(self.seconds.values())
        return {k: (v / whole if whole else 0.0) for k, v in self.seconds.items()}

    def percentile(self, q: float) -> float:
        if not self.totals:
            return 0.0
        ordered = sorted(self.totals)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def breakdown(per_request: Iterable[dict[str, float]]) -> Breakdown:
    rows = list(per_request)
    out = Breakdown()
    hops = [f"wait:{s}" for s in (*STAGES, RESULTS_HOP)]
    floors = {h: min((r[h] for r in rows), default=0.0) for h in hops}
    for r in rows:
        for h in hops:
            out.seconds["broker hop"] += floors[h]
            out.seconds["queueing"] += r[h] - floors[h]
        for stage in STAGES:
            out.seconds[stage] += r[stage]
            out.seconds["postprocess"] += r[f"post:{stage}"]
        out.totals.append(r["total"])
    return out


def milliseconds(times: dict[str, float], keys: Sequence[str] | None = None) -> dict[str, float]:
    return {k: round(v * 1e3, 3) for k, v in times.items() if keys is None or k in keys}
