"""What one gateway process holds and does, apart from HTTP: admit a request, publish it, wait for its result.

The HTTP layer (``app.py``) turns these outcomes into status codes; this module knows nothing of HTTP beyond
raising :class:`GatewayError`. Admission is the idempotency seam: a client-supplied request id is claimed once
in the results backend with a fingerprint of the image, so a retry (same id, same image) waits for the first
attempt's result instead of entering the pipeline again, and the same id with another image is a conflict.

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
from pathlib import Path

from visionpipe import budget
from visionpipe.broker import Broker, BrokerError, connect
from visionpipe.ingress import (
    BacklogWatch,
    Backpressure,
    Frame,
    ensure_pipeline_streams,
    frame_envelope,
    publish_frames,
)
from visionpipe.services.gateway.documents import RECEIVED
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.gateway_metrics import GatewayMetrics
from visionpipe.services.gateway.results_reader import ResultsReader
from visionpipe.services.gateway.store import ResultsBackend, connect_results
from visionpipe.settings import Settings
from visionpipe.stage_state import StageBoard
from visionpipe.topology import INGRESS

log = logging.getLogger(__name__)

SOURCE = "gateway"
# Enough of the image's SHA-256 to tell a retry from a different image under a reused id.
FINGERPRINT_CHARS = 32


def fingerprint(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()[:FINGERPRINT_CHARS]


def read_tokens(path: Path | None) -> frozenset[str]:
    """Bearer tokens, one per line (blank lines and # comments skipped); a named file with none is an error."""
    if path is None:
        return frozenset()
    tokens = frozenset(
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    if not tokens:
        raise ValueError(f"gateway.tokens_file {path} holds no token")
    return tokens


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
        if self._broker is None:
            self._broker = await connect(settings=self.settings)
        await ensure_pipeline_streams(self.broker, self.settings)
        self.results = await connect_results(self.settings)
        consumer = f"{self.settings.service.consumer}-gateway"
        self.reader = ResultsReader(self.broker, self.settings, self.results, self.metrics, consumer)
        await self.reader.open()
        self.watch = BacklogWatch(self.broker, self.settings)
        self.board = StageBoard(self.broker, self.settings)
        self._tasks = [
            asyncio.create_task(self.reader.run(), name="gateway-results"),
            asyncio.create_task(self.watch.run(), name="gateway-backlog"),
        ]
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
            and self.watch.fresh
            and all(not t.done() for t in self._tasks)
            and not self.stopping.is_set()
        )

    @property
    def stages_ready(self) -> bool:
        """Every stage has a consumer that finished its warm-up and still beats (where the broker can tell)."""
        board = self.board
        return not (self.settings.gateway.require_stages and board is not None and board.supported) or all(
            board.ready().values()
        )

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
    ) -> str:
        """Admit and publish one image; returns its request id (a retry's id is returned without publishing).

        ``claim=False`` with no client id: nobody knows the fresh id until the gateway answers with it, so its
        claim (which only tells a later GET "pending" from "unknown") can wait until then — see :meth:`claim`.
        ``deadline_ms`` (from ``received_ns``) is admitted only when the pipeline expects to make it.
        """
        if not self.ready or self.results is None or self.watch is None:
            raise self.not_ready()
        ttl = self.settings.gateway.result_ttl_s
        if request_id is not None:
            mark = fingerprint(image)
            held = await self.results.admit(request_id, mark, ttl)
            if held is not None:
                if held != mark:
                    raise GatewayError(
                        409, "request_id_conflict", "this request id was used for another image", request_id=request_id
                    )
                return request_id  # a retry: the first attempt is in the pipeline, or done
        rid = request_id or uuid.uuid4().hex
        try:
            self.watch.check()
            env = frame_envelope(Frame(image, rid, SOURCE))
            env.stamp(INGRESS, RECEIVED, received_ns)
            asked = self.deadline_ms(deadline_ms)
            if asked is not None:
                env.deadline_ns = received_ns + int(asked * 1e6)
                admit_deadline(self.board, self.metrics, env.deadline_ns, rid)
            else:
                # Nobody can fetch a result after its TTL: past that it need not be computed. (Not the client's
                # wait: a request whose wait ran out must still complete, to be fetched later.)
                env.deadline_ns = time.time_ns() + int(ttl * 1e9)
            publish = publish_frames(self.broker, self.settings, [env])
            if request_id is None and claim:  # a fresh id cannot be taken: its claim and its publish go together
                await asyncio.gather(self.claim(rid), publish)
            else:
                await publish
        except Backpressure as exc:
            await self.results.release(rid)
            raise GatewayError(429, "backpressure", str(exc), request_id=rid, retry_after_s=self._retry_after) from None
        except BrokerError as exc:
            await self.results.release(rid)
            raise GatewayError(
                503, "broker_unavailable", f"could not enqueue: {exc}", request_id=rid, retry_after_s=self._retry_after
            ) from None
        except GatewayError:
            await self.results.release(rid)
            raise
        return rid

    async def claim(self, request_id: str) -> None:
        """Mark a fresh id as taken, so a GET of it before its result says "pending", not "unknown"."""
        assert self.results is not None, "start() first"
        await self.results.admit(request_id, "", self.settings.gateway.result_ttl_s)

    async def wait(self, request_id: str, timeout_s: float) -> bytes | None:
        """The stored document, waiting up to ``timeout_s``; None when it is not there by then (or we stop)."""
        assert self.results is not None, "start() first"
        self.metrics.waiting.inc()
        getting = asyncio.ensure_future(self.results.get(request_id, timeout_s))
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait((getting, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                await self.claim(request_id)  # a fresh id's client learns it now: a later GET must say "pending"
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

    async def admitted(self, request_id: str) -> bool:
        assert self.results is not None, "start() first"
        return await self.results.admitted(request_id)
