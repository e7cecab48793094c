"""What one gateway process holds and does, apart from HTTP: admit a request, publish it, wait for its result.

The HTTP layer (``app.py``) turns these outcomes into status codes; this module knows nothing of HTTP beyond
raising :class:`GatewayError`. Admission is the idempotency seam: a client-supplied request id is claimed once
in the results backend with a fingerprint of the image and the submission (its ingress stamp), so a retry (same
id, same image) waits for the first attempt's result instead of entering the pipeline again, and the same id
with another image is a conflict. A result is bound to its submission (see ``store/base.py``): a request id
reused after its claim expired can never be answered with the result of the image sent under it before.

A request with a deadline (the client's, or ``limits.default_deadline_ms``) carries it into the pipeline as an
absolute time on this gateway's clock, and is refused at once (429, with the Retry-After the excess should take
to drain) when the stages, as they announce themselves (``visionpipe.stage_state``), expect to take longer.
Readiness means a request sent now will be served: every stage has a consumer that is ready and beating.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

from visionpipe import budget, heap
from visionpipe.broker import Broker, BrokerError, connect
from visionpipe.ingress import (
    BacklogWatch,
    Backpressure,
    Frame,
    ensure_pipeline_streams,
    frame_envelope,
    publish_frames,
)
from visionpipe.services.gateway.auth import read_tokens
from visionpipe.services.gateway.body import UploadBudget
from visionpipe.services.gateway.documents import RECEIVED
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.gateway_metrics import GatewayMetrics
from visionpipe.services.gateway.results_reader import ResultsReader, submission
from visionpipe.services.gateway.store import Claim, ResultsBackend, connect_results
from visionpipe.settings import Settings
from visionpipe.stage_state import StageBoard
from visionpipe.topology import INGRESS

log = logging.getLogger(__name__)

SOURCE = "gateway"
# Request ids a client may choose: printable, no separators that a key, a URL or a log line would trip on.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# Enough of the image's SHA-256 to tell a retry from a different image under a reused id.
FINGERPRINT_CHARS = 32


def fingerprint(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()[:FINGERPRINT_CHARS]


def admit_deadline(board: StageBoard | None, metrics: GatewayMetrics, deadline_ns: int, request_id: str) -> None:
    """Refuse (429) a request whose deadline is shorter than what the pipeline, as its stages announce, expects."""
    refusal = budget.admit((deadline_ns - time.time_ns()) / 1e9, board.figures() if board is not None else {})
    if refusal is not None:
        metrics.refused.labels("deadline").inc()
        raise GatewayError(
            429,
            "deadline_infeasible",
            refusal.reason(),
            request_id=request_id,
            retry_after_s=refusal.retry_after_s,
            extra={"expected_ms": round(refusal.expected_s * 1e3, 1)},
        )


class Gateway:
    def __init__(self, settings: Settings, broker: Broker | None = None, metrics: GatewayMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.tokens = read_tokens(settings.gateway.tokens_file)
        self.uploads = UploadBudget(settings.gateway.max_upload_bytes_in_flight, settings.gateway.retry_after_s)
        self._broker = broker
        self._owns_broker = broker is None
        self.results: ResultsBackend | None = None
        self.reader: ResultsReader | None = None
        self.watch: BacklogWatch | None = None
        self.board: StageBoard | None = None
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._board_task: asyncio.Task[None] | None = None

    @property
    def broker(self) -> Broker:
        assert self._broker is not None, "start() first"
        return self._broker

    async def start(self) -> None:
        """Connect and start reading; after a ``stop()`` it starts afresh (an ASGI lifespan may run again)."""
        self.stopping.clear()
        heap.keep_large_blocks_mapped()  # uploads of up to limits.max_image_bytes go back to the OS once published
        if self._broker is None:
            self._broker = await connect(settings=self.settings)
        await ensure_pipeline_streams(self.broker, self.settings)
        self.results = await connect_results(self.settings)
        consumer = f"{self.settings.service.consumer}-gateway"
        self.reader = ResultsReader(self.broker, self.settings, self.results, self.metrics, consumer)
        await self.reader.open()
        # On a thread of its own: an upload that keeps this loop busy must not make the reading look stale.
        self.watch = BacklogWatch(None, self.settings)
        await asyncio.to_thread(self.watch.start_thread, self.broker.url)
        self._tasks = [asyncio.create_task(self.reader.run(), name="gateway-results")]
        self.board = StageBoard(self.broker, self.settings)
        # Apart from the tasks readiness watches: on a broker that cannot read the states it ends, by design.
        self._board_task = asyncio.create_task(self.board.run(), name="gateway-stages")
        self.metrics.ready.labels("gateway").set(1)
        log.info("gateway reading %s as %s", self.reader.collector.results_stream, self.reader.collector.group)

    async def stop(self) -> None:
        self.stopping.set()
        self.metrics.ready.labels("gateway").set(0)
        tasks = [*self._tasks, *([self._board_task] if self._board_task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.watch is not None:
            await asyncio.to_thread(self.watch.stop_thread)
        if self.results is not None:
            await self.results.close()
        if self._owns_broker and self._broker is not None:
            await self._broker.close()
            self._broker = None

    @property
    def ready(self) -> bool:
        """Cheap enough for every request: started, reading, backlog known, not stopping."""
        return (
            self.reader is not None
            and self.reader.opened
            and self.watch is not None
            and self.watch.alive
            and self.watch.fresh
            and all(not t.done() for t in self._tasks)
            and not self.stopping.is_set()
        )

    @property
    def stages_ready(self) -> bool:
        """Every stage has a consumer that finished its warm-up and still beats (where the broker can tell)."""
        board = self.board
        return board is None or not board.supported or all(board.ready().values())

    def stage_states(self) -> dict[str, str]:
        return self.board.states() if self.board is not None and self.board.supported else {}

    async def ready_checks(self) -> dict[str, bool]:
        try:
            broker_ok = await self.broker.ping() if self._broker is not None else False
        except Exception:
            broker_ok = False
        store_ok = self.results is not None and await self.results.ping()
        return {"broker": broker_ok, "results": store_ok, "serving": self.ready, "stages": self.stages_ready}

    def not_ready(self) -> GatewayError:
        return GatewayError(503, "not_ready", "the gateway is starting or stopping", retry_after_s=self._retry_after)

    @property
    def _retry_after(self) -> int:
        return self.settings.gateway.retry_after_s

    def deadline_ms(self, asked_ms: float | None) -> float | None:
        """The request's deadline: the client's, else the setting's; None: it has none."""
        return asked_ms if asked_ms is not None else self.settings.limits.default_deadline_ms

    async def submit(
        self,
        image: bytes,
        request_id: str | None,
        received_ns: int,
        *,
        claim: bool = True,
        deadline_ms: float | None = None,
    ) -> Submitted:
        """Admit and publish one image; a retry (same id, same image) is answered with the first attempt's claim.

        ``claim=False`` with no client id: nobody knows the fresh id until the gateway answers with it, so its
        claim (which only tells a later GET "pending" from "unknown") can wait until then — see :meth:`claim`.
        ``deadline_ms`` (from ``received_ns``) is admitted only when the pipeline expects to make it.
        """
        if not self.ready or self.results is None or self.watch is None:
            raise self.not_ready()
        ttl = self.settings.gateway.result_ttl_s
        rid = request_id or uuid.uuid4().hex
        mark = await asyncio.to_thread(fingerprint, image)  # SHA-256 of up to 25 MB: not on the event loop
        env = frame_envelope(Frame(image, rid, SOURCE))
        env.stamp(INGRESS, RECEIVED, received_ns)
        # Without a deadline of the client's: nobody can fetch a result after its TTL, so past that it need not be
        # computed. (Not the client's wait: a request whose wait ran out must still complete, to be fetched later.)
        asked = self.deadline_ms(deadline_ms)
        env.deadline_ns = received_ns + int(asked * 1e6) if asked is not None else time.time_ns() + int(ttl * 1e9)
        mine = Claim(mark, submission(env))
        if request_id is not None:
            held = await admit_request(self.results, rid, mine, ttl)
            if held is not None:
                return Submitted(rid, held)  # a retry: the first attempt is in the pipeline, or done
        try:
            self.watch.check()
            if asked is not None:
                admit_deadline(self.board, self.metrics, env.deadline_ns, rid)
            publish = publish_frames(self.broker, self.settings, [env])
            if request_id is None and claim:  # a fresh id cannot be taken: its claim and its publish go together
                await asyncio.gather(self.claim(rid, mine), publish)
            else:
                await publish
        except Backpressure as exc:
            await self.results.release(rid, mine)
            raise GatewayError(429, "backpressure", str(exc), request_id=rid, retry_after_s=self._retry_after) from None
        except BrokerError as exc:
            await self.results.release(rid, mine)
            raise GatewayError(
                503, "broker_unavailable", f"could not enqueue: {exc}", request_id=rid, retry_after_s=self._retry_after
            ) from None
        except GatewayError:
            await self.results.release(rid, mine)
            raise
        return Submitted(rid, mine)

    async def claim(self, request_id: str, claim: Claim) -> None:
        """Mark a fresh id as taken, so a GET of it before its result says "pending", not "unknown"."""
        assert self.results is not None, "start() first"
        await self.results.admit(request_id, claim, self.settings.gateway.result_ttl_s)

    async def wait(self, request_id: str, claim: Claim, timeout_s: float) -> bytes | None:
        """The document of ``claim``'s submission, waiting up to ``timeout_s``; None when not there by then."""
        assert self.results is not None, "start() first"
        self.metrics.waiting.inc()
        getting = asyncio.ensure_future(self.results.get(request_id, claim.submission, timeout_s))
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait((getting, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                await self.claim(request_id, claim)  # a fresh id's client learns it now: a GET must say "pending"
                raise GatewayError(
                    503,
                    "stopping",
                    "this gateway is stopping; fetch the result later",
                    request_id=request_id,
                    retry_after_s=self._retry_after,
                )
            return getting.result()
        finally:
            getting.cancel()
            stopping.cancel()
            self.metrics.waiting.dec()

    async def claimed(self, request_id: str) -> Claim | None:
        """Who holds ``request_id`` now: a GET answers for that submission, and only for it."""
        assert self.results is not None, "start() first"
        return await self.results.claimed(request_id)


@dataclass(frozen=True)
class Submitted:
    """An admitted upload: its request id and the claim whose result answers it (the first attempt's, for a retry)."""

    request_id: str
    claim: Claim


async def admit_request(results: ResultsBackend, request_id: str, claim: Claim, ttl_s: float) -> Claim | None:
    """Claim a client's request id for this submission: None when it is ours now, else the claim a retry waits for.

    The same id with another image (or held by a result whose image is not known) is a conflict while that claim
    lives, which is as long as its result does: its result is never handed to this request.
    """
    held = await results.admit(request_id, claim, ttl_s)
    if held is not None and held.fingerprint != claim.fingerprint:
        raise GatewayError(
            409,
            "request_id_conflict",
            "this request id is held by a request for another image until its result expires",
            request_id=request_id,
        )
    return held
