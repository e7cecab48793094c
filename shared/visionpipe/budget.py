"""One latency bound per request, split across the stages as the work flows.

A request carries one absolute deadline (``Envelope.deadline_ns``, wall clock). Each stage batches against its own
part of it, the *stage deadline*, and the pipeline answers ``deadline_exceeded`` the moment a stage knows that
part cannot be met. Two ways to split it, by ``limits.deadline_split``:

* ``propagate`` (the default): a stage's deadline is the request's deadline less what the stages after it are
  expected to take now — their queue wait and batch time, as each announces it through the broker
  (``visionpipe.stage_state``), plus the broker hops in between. A stage ahead of an idle classifier may use
  almost all of what is left; one ahead of a backed-up classifier gets less, at once;
* ``static`` (the baseline, Nexus-style): each stage gets a fixed share of the request's whole budget,
  proportional to its batch time at its current rate, and the shares add up in pipeline order.

Front-door admission uses the same figures: a request whose budget is shorter than what the whole pipeline is
expected to take now is refused (429) with a Retry-After of the time that excess should take to drain.

Pure arithmetic on nanoseconds and seconds: the stages, the gateway and the discrete-event simulator
(``visionpipe.loadgen.bench.deadline_sim``) all call it, so they cannot disagree about what a budget is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from visionpipe.topology import STAGES

NS = 1_000_000_000
SPLITS = ("propagate", "static")
# Retry-After is whole seconds (RFC 9110); a refusal always says to wait at least this long.
MIN_RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class StageFigures:
    """What the stages before a stage know of it: seconds a request arriving now should expect there.

    ``expected_s`` counts the broker hop into the stage, the wait in its backlog and queue, and its batch;
    ``minimum_s`` the hop and one item alone on an idle device; ``batch_s`` its batch time at the current rate
    (what the static split divides by); ``hop_s`` the broker hop into it alone. The last stage's hop stands for
    the one out of the pipeline, to whoever reads the results.
    """

    expected_s: float
    minimum_s: float
    batch_s: float
    hop_s: float = 0.0


def after(stage: str, stages: Sequence[str] = STAGES) -> tuple[str, ...]:
    """The stages a request still goes through once it leaves ``stage``."""
    return tuple(stages[stages.index(stage) + 1 :])


def egress_s(figures: Mapping[str, StageFigures], stages: Sequence[str] = STAGES) -> float:
    """The hop from the last stage to the reader of results, estimated by the hop into the last stage."""
    last = figures.get(stages[-1])
    return last.hop_s if last is not None else 0.0


def downstream_s(stage: str, figures: Mapping[str, StageFigures], stages: Sequence[str] = STAGES) -> float:
    """What the stages after ``stage`` (and the way out) are expected to take now; an unknown stage counts nothing."""
    return sum(figures[s].expected_s for s in after(stage, stages) if s in figures) + egress_s(figures, stages)


def downstream_minimum_s(stage: str, figures: Mapping[str, StageFigures], stages: Sequence[str] = STAGES) -> float:
    return sum(figures[s].minimum_s for s in after(stage, stages) if s in figures) + egress_s(figures, stages)


def shares(figures: Mapping[str, StageFigures], stages: Sequence[str] = STAGES) -> dict[str, float]:
    """The static split: each stage's share of a budget, proportional to its batch time; equal without figures."""
    times = {s: max(figures[s].batch_s, 0.0) if s in figures else 0.0 for s in stages}
    total = sum(times.values())
    if total <= 0:
        return {s: 1.0 / len(stages) for s in stages}
    return {s: t / total for s, t in times.items()}


def stage_deadline_ns(
    deadline_ns: int,
    start_ns: int,
    stage: str,
    figures: Mapping[str, StageFigures],
    split: str = "propagate",
    stages: Sequence[str] = STAGES,
    static_shares: Mapping[str, float] | None = None,
) -> int:
    """When ``stage`` must be done with a request due at ``deadline_ns`` that entered the pipeline at ``start_ns``.

    ``static_shares`` fixes the static split (a planner's profile); without it the shares come from ``figures``.
    The static split divides what is left once the broker hops are paid for, each stage's share after the hops
    before it, so a fast stage's small share is not spent in the broker.
    """
    if split == "static":
        cut = static_shares if static_shares is not None else shares(figures, stages)
        upto = stages[: stages.index(stage) + 1]
        hops = {s: figures[s].hop_s if s in figures else 0.0 for s in stages}
        work_ns = deadline_ns - start_ns - int((sum(hops.values()) + egress_s(figures, stages)) * NS)
        share = min(sum(cut.get(s, 0.0) for s in upto), 1.0)
        return start_ns + int(sum(hops[s] for s in upto) * NS) + int(max(work_ns, 0) * share)
    if split != "propagate":
        raise ValueError(f"unknown deadline split {split!r}: one of {', '.join(SPLITS)}")
    return deadline_ns - int(downstream_s(stage, figures, stages) * NS)


def pipeline_expected_s(figures: Mapping[str, StageFigures], stages: Sequence[str] = STAGES) -> float:
    """What a request entering now is expected to take through every stage and out."""
    return sum(figures[s].expected_s for s in stages if s in figures) + egress_s(figures, stages)


def pipeline_minimum_s(figures: Mapping[str, StageFigures], stages: Sequence[str] = STAGES) -> float:
    return sum(figures[s].minimum_s for s in stages if s in figures) + egress_s(figures, stages)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused at the front door, and when to try again."""

    expected_s: float
    budget_s: float
    minimum_s: float
    retry_after_s: int

    @property
    def impossible(self) -> bool:
        """Shorter than the fastest the pipeline can ever be: no retry will help."""
        return self.budget_s < self.minimum_s

    def reason(self) -> str:
        if self.impossible:
            return (
                f"a deadline of {self.budget_s * 1e3:.0f} ms is shorter than the pipeline's fastest possible "
                f"answer ({self.minimum_s * 1e3:.0f} ms)"
            )
        return (
            f"a deadline of {self.budget_s * 1e3:.0f} ms is shorter than the pipeline's current expected latency "
            f"({self.expected_s * 1e3:.0f} ms); retry in {self.retry_after_s} s"
        )


def admit(budget_s: float, figures: Mapping[str, StageFigures], stages: Sequence[str] = STAGES) -> Refusal | None:
    """None to admit a request with ``budget_s`` left; else the refusal (the pipeline expects to take longer).

    The excess is mostly queueing, which drains about as fast as time passes when nothing more is admitted,
    so the excess itself is when a retry may find room.
    """
    expected = pipeline_expected_s(figures, stages)
    if budget_s >= expected:
        return None
    retry = max(MIN_RETRY_AFTER_S, math.ceil(expected - budget_s))
    return Refusal(expected, budget_s, pipeline_minimum_s(figures, stages), retry)
