"""Per-message policies of a worker, each a small module with hooks around processing and acking.

The worker only fires the hooks of :class:`Middleware` (``base.py``) through a
:class:`Chain`; what happens to a message that is a duplicate, has failed too
often, has outlived its deadline or cannot be processed is decided here, one
policy per module, so each can be read, tested and replaced on its own. A
deployment adds policies of its own with ``service.middleware``
(``VISIONPIPE_SERVICE__MIDDLEWARE='["mypkg.audit:Audit"]'``); docs/middleware.md
shows one.
"""

from __future__ import annotations

import importlib

from visionpipe.services.runtime.middleware.base import Chain, Item, Middleware, StageContext, Verdict
from visionpipe.services.runtime.middleware.dead_letters import DeadLetters
from visionpipe.services.runtime.middleware.deadline import Deadline
from visionpipe.services.runtime.middleware.dedupe import Dedupe
from visionpipe.services.runtime.middleware.heartbeat import Heartbeat
from visionpipe.services.runtime.middleware.retries import Retries
from visionpipe.services.runtime.middleware.stage_metrics import StageMetrics
from visionpipe.settings import Settings

__all__ = [
    "Chain",
    "DeadLetters",
    "Deadline",
    "Dedupe",
    "Heartbeat",
    "Item",
    "Middleware",
    "Retries",
    "StageContext",
    "StageMetrics",
    "Verdict",
    "default_middleware",
    "load_middleware",
]


def default_middleware(settings: Settings) -> list[Middleware]:
    """The policies every stage runs, in the order they admit a message (they let go of it in reverse).

    The heartbeat first, so every delivery taken is kept ours from the start
    and until every other policy is done with it. Dedupe next: a copy of a
    request this process is still working on must be left alone before
    anything else may ack or dead-letter it, and it names each input's
    once-key for the settle. Then the bound on attempts and the deadline,
    which may dead-letter; the dead letters, settled with the ack; metrics
    last in, so first out: they count what the others decided.
    """
    return [
        Heartbeat(settings.broker.reclaim_idle_s, settings.service.work_timeout_s),
        Dedupe(),
        Retries(settings.limits.max_retries),
        Deadline(),
        DeadLetters(),
        *load_middleware(settings.service.middleware),
        StageMetrics(),
    ]


def load_middleware(paths: list[str]) -> list[Middleware]:
    """Policies named ``package.module:Class``, each built with no arguments; a wrong name fails at start."""
    loaded: list[Middleware] = []
    for path in paths:
        module, _, name = path.partition(":")
        if not module or not name:
            raise ValueError(f"middleware {path!r}: expected 'package.module:Class'")
        cls = getattr(importlib.import_module(module), name, None)
        if not (isinstance(cls, type) and issubclass(cls, Middleware)):
            raise ValueError(f"middleware {path!r} is not a visionpipe Middleware class")
        loaded.append(cls())
    return loaded
