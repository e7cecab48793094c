"""Where a request's time went, from the per-stage stamps its envelope carries (a DNN server-overheads breakdown).

For each stage the envelope holds ``dequeued``, ``batch_start``,
``compute_done`` and ``published`` (wall-clock ns), and ingress ``enqueued``.
The interval between two consecutive stamps is charged to the *segment that
ends at the later one*, so a stage that does not stamp (say) ``batch_start``
has its queueing merged into its compute rather than lost, and the segments
always add up to the whole. Segments fall into categories:

* **ingress wait** — from the request's start (a scheduled send, a file read)
  to its enqueue: backpressure at the front door;
* **broker hops** — a publish to the next dequeue: time in the broker,
  including waiting in the stream while the consumer is busy. Over a run,
  the fastest crossing of each hop is the hop's own cost (:attr:`Split.hop_floor_s`),
  the excess is queueing in the streams;
* **stage queueing** — dequeue to batch start: waiting inside a stage;
* **decode / detector / classifier** — batch start to compute done (for the
  DNN stages this includes waiting in a forming device batch);
* **post-processing + publish** — compute done to publish.

``visionpipe run`` and the load generator both report with this module, so
their numbers mean the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from visionpipe.envelope import Envelope, Event
from visionpipe.topology import DECODE, INGRESS, STAGES

SINK = "sink"
CATEGORIES = (
    "ingress wait",
    "broker hops",
    "stage queueing",
    "decode",
    "detector",
    "classifier",
    "post-processing + publish",
)
DNN = ("detector", "classifier")


def segment_chain() -> list[tuple[str, str, str]]:
    """(segment name, stage, event) in pipeline order; each segment ends at its stamp."""
    chain = [("ingress wait", INGRESS, str(Event.ENQUEUED))]
    for stage in STAGES:
        chain += [
            (f"hop → {stage}", stage, str(Event.DEQUEUED)),
            (f"{stage} queueing", stage, str(Event.BATCH_START)),
            (f"{stage} compute", stage, str(Event.COMPUTE_DONE)),
            (f"{stage} post", stage, str(Event.PUBLISHED)),
        ]
    return chain


SEGMENTS = [name for name, _, _ in segment_chain()] + [f"hop → {SINK}"]
HOPS = [s for s in SEGMENTS if s.startswith("hop")]


def category(segment: str) -> str:
    """Group a segment for the stacked bars, the summary table and the non-DNN share."""
    if segment.startswith("hop"):
        return "broker hops"
    if segment.endswith("queueing"):
        return "stage queueing"
    if segment.endswith("post"):
        return "post-processing + publish"
    if segment == f"{DECODE} compute":
        return "decode"
    if segment.endswith("compute"):
        return segment.split()[0]  # detector / classifier
    return segment  # ingress wait


def segments(env: Envelope, start_wall_ns: int, received_wall_ns: int) -> dict[str, int]:
    """Nanoseconds per segment for one result; missing stamps merge into the next segment."""
    out: dict[str, int] = {}
    prev = start_wall_ns
    for name, stage, event in segment_chain():
        ns = env.ts(stage, event)
        if ns is None:
            continue
        out[name] = ns - prev
        prev = ns
    out[f"hop → {SINK}"] = received_wall_ns - prev
    return out


def categories_ms(parts: dict[str, int]) -> dict[str, float]:
    """One request's segments summed per category, in ms, with its ``total``."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for name, ns in parts.items():
        out[category(name)] += ns / 1e6
    out["total"] = sum(parts.values()) / 1e6
    return {k: round(v, 3) for k, v in out.items()}


def non_dnn_share(categories: dict[str, float]) -> float | None:
    """Everything but detector and classifier compute, over end to end: what docs/background.md's study measured."""
    whole = sum(categories.get(c, 0.0) for c in CATEGORIES)
    dnn = sum(categories.get(c, 0.0) for c in DNN)
    return (whole - dnn) / whole if whole > 0 else None


@dataclass
class Split:
    """A run's requests: seconds per category, each hop's fastest crossing, end-to-end totals."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    totals: list[float] = field(default_factory=list)
    hop_floors_s: dict[str, float] = field(default_factory=dict)

    def add(self, parts: dict[str, int]) -> None:
        for name, ns in parts.items():
            self.seconds[category(name)] += ns / 1e9
            if name in HOPS:
                self.hop_floors_s[name] = min(self.hop_floors_s.get(name, ns / 1e9), ns / 1e9)
        self.totals.append(sum(parts.values()) / 1e9)

    @property
    def hop_floor_s(self) -> float:
        """Per request, the sum over hops of the fastest crossing seen: the broker's own cost, without queueing."""
        return sum(self.hop_floors_s.values())

    @property
    def share(self) -> dict[str, float]:
        whole = sum(self.seconds.values())
        return {k: (v / whole if whole else 0.0) for k, v in self.seconds.items()}

    def mean_ms(self) -> dict[str, float]:
        n = max(len(self.totals), 1)
        return {k: v / n * 1e3 for k, v in self.seconds.items()}

    def percentile(self, q: float) -> float:
        if not self.totals:
            return 0.0
        ordered = sorted(self.totals)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def split(per_request: Iterable[dict[str, int]]) -> Split:
    out = Split()
    for parts in per_request:
        out.add(parts)
    return out
