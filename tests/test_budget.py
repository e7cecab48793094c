"""The deadline split: what a stage may spend of a request's deadline, and what the front door refuses."""

from __future__ import annotations

import pytest

from visionpipe import budget
from visionpipe.budget import StageFigures
from visionpipe.topology import CLASSIFIER, DECODE, DETECTOR

MS = 1_000_000
FIGURES = {
    DECODE: StageFigures(expected_s=0.010, minimum_s=0.004, batch_s=0.004, hop_s=0.001),
    DETECTOR: StageFigures(expected_s=0.100, minimum_s=0.020, batch_s=0.060, hop_s=0.001),
    CLASSIFIER: StageFigures(expected_s=0.030, minimum_s=0.008, batch_s=0.020, hop_s=0.002),
}


def test_propagate_leaves_each_stage_the_deadline_less_what_comes_after() -> None:
    deadline = 1000 * MS
    # after the detector: the classifier's 30 ms and the way out (its hop, 2 ms)
    assert budget.stage_deadline_ns(deadline, 0, DETECTOR, FIGURES) == deadline - 32 * MS
    assert budget.stage_deadline_ns(deadline, 0, DECODE, FIGURES) == deadline - 132 * MS
    assert budget.stage_deadline_ns(deadline, 0, CLASSIFIER, FIGURES) == deadline - 2 * MS
    assert budget.stage_deadline_ns(deadline, 0, DETECTOR, {}) == deadline, "nobody heard of: nothing subtracted"


def test_a_busier_stage_downstream_shortens_the_budget_at_once() -> None:
    busy = {**FIGURES, CLASSIFIER: StageFigures(0.300, 0.008, 0.020, 0.002)}
    calm = budget.stage_deadline_ns(1000 * MS, 0, DETECTOR, FIGURES)
    assert budget.stage_deadline_ns(1000 * MS, 0, DETECTOR, busy) == calm - 270 * MS


def test_static_split_gives_shares_by_batch_time_after_the_hops() -> None:
    shares = budget.shares(FIGURES)
    assert shares == pytest.approx({DECODE: 4 / 84, DETECTOR: 60 / 84, CLASSIFIER: 20 / 84})
    # 1000 ms less 6 ms of hops (three in, one out) is 994 ms of work; decode's share comes after its hop.
    due = budget.stage_deadline_ns(1000 * MS, 0, DECODE, FIGURES, "static")
    assert due == pytest.approx(1 * MS + 994 * MS * 4 / 84, abs=2)
    last = budget.stage_deadline_ns(1000 * MS, 0, CLASSIFIER, FIGURES, "static")
    assert last == pytest.approx(4 * MS + 994 * MS, abs=2), "the last stage ends where the way out begins"
    fixed = budget.stage_deadline_ns(1000 * MS, 0, DECODE, {}, "static", static_shares={DECODE: 0.5})
    assert fixed == 500 * MS


def test_an_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown deadline split"):
        budget.stage_deadline_ns(1, 0, DECODE, FIGURES, "guess")


@pytest.mark.parametrize(
    ("budget_s", "refused", "retry_after", "impossible"),
    [(0.5, False, None, False), (0.1, True, 1, False), (0.02, True, 1, True)],
)
def test_admission_refuses_what_the_pipeline_expects_to_miss(
    budget_s: float, refused: bool, retry_after: int | None, impossible: bool
) -> None:
    refusal = budget.admit(budget_s, FIGURES)
    assert (refusal is not None) is refused
    if refusal is not None:
        assert refusal.expected_s == pytest.approx(0.142) and refusal.retry_after_s == retry_after
        assert refusal.impossible is impossible
        assert ("fastest possible" in refusal.reason()) is impossible


def test_retry_after_is_the_excess_in_whole_seconds() -> None:
    slow = {DETECTOR: StageFigures(expected_s=4.2, minimum_s=0.02, batch_s=0.06)}
    refusal = budget.admit(1.0, slow)
    assert refusal is not None and refusal.retry_after_s == 4
