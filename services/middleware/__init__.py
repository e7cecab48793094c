"""Per-message policies of a worker, each a small module with hooks around processing and acking.

The worker's loop only fires the hooks of :class:`Middleware` (base.py), in
the order of :func:`default_middleware`; what happens to a message that is a
duplicate, has failed too often, has outlived its deadline or cannot be
processed is decided here, one policy per module, so each can be read,
tested and replaced on its own (the shape Dramatiq's middleware has).
"""

from __future__ import annotations

from visionpipe.services.middleware.base import Item, Middleware, Verdict
from visionpipe.services.middleware.dead_letters import DeadLetters
from visionpipe.services.middleware.deadline import Deadline
from visionpipe.services.middleware.dedupe import Dedupe
from visionpipe.services.middleware.heartbeat import Heartbeat
from visionpipe.services.middleware.metrics import StageMetrics
from visionpipe.services.middleware.retries import Retries
from visionpipe.settings import Settings

__all__ = [
    "DeadLetters",
    "Deadline",
    "Dedupe",
    "Heartbeat",
    "Item",
    "Middleware",
    "Retries",
    "StageMetrics",
    "Verdict",
]


def default_middleware(settings: Settings) -> list[Middleware]:
    """The policies every stage runs, in hook order.

    The heartbeat first, so every delivery taken is kept ours from the start.
    Dedupe next: a copy of a request this process is still working on must be
    left alone before anything else may ack or dead-letter it, and it names
    each input's once-key for the settle. Then the bound on attempts and the
    deadline, which may dead-letter; the dead letters, settled with the ack;
    metrics last, so they count what the others decided.
    """
    return [
        Heartbeat(settings.broker.reclaim_idle_s, settings.service.work_timeout_s),
        Dedupe(),
        Retries(settings.limits.max_retries),
        Deadline(),
        DeadLetters(),
        StageMetrics(),
    ]
