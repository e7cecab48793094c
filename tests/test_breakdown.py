"""The breakdown from envelope stamps: segments add up to the whole, a missing stamp merges forward."""

from __future__ import annotations

from tests.stamps import MS, T0_WALL, stamped
from visionpipe.breakdown import SEGMENTS, categories_ms, category, non_dnn_share, segments, split
from visionpipe.envelope import Event


def test_segments_add_up_to_end_to_end_and_dnn_compute_is_apart() -> None:
    env = stamped("r1-0", T0_WALL)
    received = T0_WALL + 40 * MS
    parts = segments(env, T0_WALL, received)
    assert list(parts) == SEGMENTS
    assert sum(parts.values()) == 40 * MS
    assert parts["detector compute"] == parts["classifier compute"] == 10 * MS
    assert parts["hop → sink"] == received - env.ts("classifier", Event.PUBLISHED)
    assert {category(s) for s in SEGMENTS} >= {"broker hops", "decode", "detector", "classifier", "ingress wait"}


def test_a_missing_stamp_merges_into_the_next_segment_instead_of_vanishing() -> None:
    env = stamped("r1-0", T0_WALL, skip={("detector", "batch_start")})
    parts = segments(env, T0_WALL, T0_WALL + 40 * MS)
    assert "detector queueing" not in parts
    assert parts["detector compute"] == 11 * MS  # its queueing (1 ms) charged to compute
    assert sum(parts.values()) == 40 * MS


def test_categories_and_the_run_split_agree_with_the_segments() -> None:
    env = stamped("r1-0", T0_WALL)
    parts = segments(env, T0_WALL, T0_WALL + 40 * MS)
    cats = categories_ms(parts)
    assert cats["total"] == 40 and cats["detector"] == cats["classifier"] == 10
    assert non_dnn_share(cats) == (40 - 20) / 40
    run = split([parts, segments(stamped("r1-1", T0_WALL), T0_WALL, T0_WALL + 50 * MS)])
    assert run.percentile(0) == 0.040 and run.percentile(100) == 0.050
    # The slower request only waited longer on the last hop: the floor keeps the faster crossing.
    assert run.hop_floors_s["hop → sink"] == parts["hop → sink"] / 1e9
    assert sum(run.mean_ms().values()) == 45
