"""Idempotency against redelivery: each input's outcome is published once, whoever settles it and however often.

The guard that counts lives in the broker: every settled item carries a
once-key, and the broker's settle publishes nothing for a key it has already
settled (Redis: a key with a TTL set in the same script that publishes and
acks; memory: the same under its lock). So a second copy of a request —
reclaimed from a consumer that was killed or stalled, a settle retried after
its reply was lost — adds nothing to the output, across processes. Kafka
ignores the key: its settle publishes an input's outputs with the commit of
its offset (in one transaction where ``broker.kafka_transactions`` is on), and
a redelivered offset is one that was not committed, so not published.

The key names the stage and the *submission*: the request id together with
the ingress enqueue stamp. Redeliveries of one submission share it; a later
request that reuses an id was stamped at a different time, so it is a new key
and is processed (not acked as a duplicate with neither result nor dead
letter); a dead letter sent back by ``visionpipe dlq replay`` carries a replay
stamp, so it is a new key too. Inputs without an id or stamp (a broken
envelope) are keyed by their place in the stream. Refusing reused ids at
ingress instead would need a registry of every id ever seen, and a time
window on the id alone would still swallow a reuse inside the window.

Here, in the process, two cheap shortcuts: a copy of a request still being
worked on here is left alone (``SKIP``: acking it would ack the entry before
its output exists), and a copy of one finished here lately is acked at once
(``DUPLICATE``) instead of being computed again for the broker to drop.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from visionpipe import topology
from visionpipe.envelope import REPLAYED, Event
from visionpipe.services.runtime.middleware.base import Item, Middleware, StageContext, Verdict
from visionpipe.topology import INGRESS

# Keys remembered in the process: a few minutes of traffic at thousands of messages per second.
DONE_MEMORY = 100_000
# Bytes of hash in a once-key: ids may be 256 characters; 12 bytes keep each broker key ~50 bytes, collision-free
# in practice (2^-48 odds for a billion keys live at once).
KEY_DIGEST_BYTES = 12


def once_key(ctx: StageContext, item: Item) -> str:
    """The broker key that says the stage has settled this submission (see the module's docstring)."""
    env = item.envelope
    enqueued = env.ts(INGRESS, Event.ENQUEUED) if env is not None else None
    if env is not None and enqueued is not None:
        ident = f"{env.request_id}\0{enqueued}\0{env.ts(INGRESS, REPLAYED)}"
    else:
        ident = f"{item.delivery.stream}\0{item.delivery.id}"
    digest = hashlib.blake2b(ident.encode(), digest_size=KEY_DIGEST_BYTES).hexdigest()
    return f"{topology.once_prefix(ctx.settings)}{ctx.stage}.{digest}"


class Dedupe(Middleware):
    def __init__(self, memory: int = DONE_MEMORY) -> None:
        self.memory = memory
        self.done: OrderedDict[str, None] = OrderedDict()
        self.working: set[str] = set()

    def admit(self, ctx: StageContext, item: Item) -> None:
        rid = item.request_id
        if rid is None:
            return
        if rid in self.working:  # also a second copy in the same consumed batch
            item.verdict = Verdict.SKIP
        elif once_key(ctx, item) in self.done:
            item.verdict = Verdict.DUPLICATE
        else:
            self.working.add(rid)

    async def before_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        for it in items:
            it.once = once_key(ctx, it)

    def after_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        for it in items:
            if it.verdict is Verdict.DONE and it.once is not None:
                self.done[it.once] = None
        while len(self.done) > self.memory:
            self.done.popitem(last=False)

    def on_release(self, ctx: StageContext, items: Sequence[Item]) -> None:
        # Also reached when a batch was cancelled (shutdown): those items stay pending and come back by reclaim,
        # so they must not look in progress then, or admit would skip them for ever.
        self.working.difference_update(it.envelope.request_id for it in items if it.envelope is not None)
