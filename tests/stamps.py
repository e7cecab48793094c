"""Envelopes stamped along the whole pipeline at known times, for the breakdown and recorder tests."""

from __future__ import annotations

from visionpipe.envelope import Envelope, Event

MS = 1_000_000
T0_WALL = 1_700_000_000_000_000_000


def stamped(rid: str, start_wall: int, skip: frozenset[tuple[str, str]] = frozenset()) -> Envelope:
    """An envelope stamped every ms along the pipeline: enqueue at +1 ms, then one event per ms."""
    env = Envelope(rid, payload={"objects": [{"label": 1}, {"label": 2}], "weights": {"detector": "random"}})
    t = start_wall + MS
    env.stamp("ingress", Event.ENQUEUED, t)
    for stage in ("decode", "detector", "classifier"):
        for event in (Event.DEQUEUED, Event.BATCH_START, Event.COMPUTE_DONE, Event.PUBLISHED):
            t += MS * (10 if event == Event.COMPUTE_DONE and stage != "decode" else 1)
            if (stage, str(event)) not in skip:
                env.stamp(stage, event, t)
    return env
