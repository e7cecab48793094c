"""One doubling backoff for every retry loop: doubles, caps, resets."""

from __future__ import annotations

import pytest

from visionpipe.backoff import FIRST_S, MAX_S, Backoff


def test_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.next() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    b.reset()
    assert b.next() == pytest.approx(0.1)


def test_defaults_start_short_and_stop_at_seconds() -> None:
    b = Backoff()
    assert b.next() == FIRST_S and FIRST_S < 1 <= MAX_S <= 10


async def test_wait_sleeps_the_next_delay() -> None:
    b = Backoff(0.001, 0.002)
    assert await b.wait() == pytest.approx(0.001)
    assert await b.wait() == pytest.approx(0.002)
