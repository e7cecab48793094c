"""The prefetch ledger: each consumed batch's hold is taken, corrected to its weight, released, closed once."""

from __future__ import annotations

import asyncio

import pytest

from visionpipe.services.runtime.prefetch import Prefetch


async def _has_room(p: Prefetch) -> bool:
    try:
        await asyncio.wait_for(p.room(), 0.01)
    except TimeoutError:
        return False
    return True


async def test_a_hold_counts_one_per_message_until_corrected_then_releases_in_parts() -> None:
    p = Prefetch(10)
    hold = p.hold(4)
    assert p.held == 4
    hold.correct(9)  # admitted: four messages carrying nine crops
    assert p.held == 9 and await _has_room(p)
    hold.release(3)
    assert (p.held, hold.count) == (6, 6)
    hold.release(100)  # never more than it holds
    assert (p.held, hold.count) == (0, 0)
    hold.close()
    assert p.held == 0


async def test_room_closes_at_the_limit_and_opens_when_a_batch_closes() -> None:
    p = Prefetch(8)
    first, second = p.hold(4), p.hold(4)
    assert not await _has_room(p)
    second.correct(2)
    assert await _has_room(p)
    first.correct(20)  # one consume may overshoot by its own weight
    assert not await _has_room(p)
    first.close()
    second.close()
    assert p.held == 0 and await _has_room(p)


@pytest.mark.parametrize("limit", [0, -3])
async def test_a_limit_below_one_still_lets_one_request_through(limit: int) -> None:
    p = Prefetch(limit)
    assert await _has_room(p)
    p.hold(1)
    assert not await _has_room(p)
