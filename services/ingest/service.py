"""``visionpipe ingest``: the ingest service, its streams API, probes and metrics, on one uvicorn port.

One process owns the :class:`~.registry.StreamRegistry`: the sources of ``ingest.sources`` and of the
command line are added at start, more are added and removed through ``/v1/streams`` while it runs. The
same port answers ``/healthz`` (the event loop turns), ``/readyz`` (the broker answers) and ``/metrics``. It binds
to ``service.host`` (loopback unless told otherwise), and the streams API takes the gateway's bearer tokens
(``gateway.tokens_file``) and only the sources :mod:`.api_check` allows.
On the embedded ``memory://`` broker nothing outside this process could read the frames, so the three
stages then run here too, as in ``visionpipe run``. SIGTERM stops every stream, each sending its
end-of-stream message, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from visionpipe import __version__
from visionpipe.broker import Broker, connect, redact_url
from visionpipe.ingress import ensure_pipeline_streams
from visionpipe.services.gateway.auth import auth_dependencies, read_tokens
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.ingest.api import streams_router
from visionpipe.services.ingest.api_check import check_api_source
from visionpipe.services.ingest.ingest_metrics import exposition, ingest_metrics
from visionpipe.services.ingest.registry import StreamRegistry
from visionpipe.services.ingest.sink import ResultsSink, StreamTarget
from visionpipe.services.runtime.local import LocalStages
from visionpipe.settings import Settings, StreamSource
from visionpipe.topology import STAGES

log = logging.getLogger(__name__)

# Readiness pings the broker; one slower than this is as good as down to a probe.
READY_TIMEOUT_S = 2.0
# How often --until-done looks whether every stream (and its results) is done.
DONE_POLL_S = 0.1


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service drains its streams on SIGTERM, then stops the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_app(
    registry: StreamRegistry, broker: Broker, metrics: CollectorRegistry, settings: Settings | None = None
) -> FastAPI:
    """The streams API (behind the gateway's bearer tokens, when it has some, and checked: :mod:`.api_check`),
    the probes and the metrics."""
    settings = settings or registry.settings
    app = FastAPI(title="visionpipe ingest", version=__version__)
    app.add_exception_handler(GatewayError, _error_response)  # 401 as the gateway answers it
    ingest = settings.ingest
    routes = streams_router(registry, lambda spec: check_api_source(spec, ingest))
    app.include_router(routes, dependencies=auth_dependencies(read_tokens(settings.gateway.tokens_file)))

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    async def healthz() -> str:
        return "ok\n"

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        try:
            broker_ok = await asyncio.wait_for(broker.ping(), READY_TIMEOUT_S)
        except Exception:  # a failing check means not ready, never a failed request
            broker_ok = False
        return JSONResponse(
            {"ready": broker_ok, "checks": {"broker": broker_ok}}, status_code=200 if broker_ok else 503
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(exposition(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


async def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return exc.response()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so that port 0 yields a known port before the server starts."""
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setblocking(False)
    return sock


@dataclass
class IngestService:
    settings: Settings
    sources: Sequence[StreamSource] = ()
    results: Path | None = None
    with_stages: bool | None = None  # None: when the broker is memory://
    port: int = 0  # bound port, once started
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, until_done: bool = False) -> None:
        settings = self.settings
        broker = await connect(settings=settings)
        try:
            await ensure_pipeline_streams(broker, settings)
            registry = StreamRegistry(broker, settings)
            local = self.with_stages if self.with_stages is not None else settings.broker.url.startswith("memory:")
            async with LocalStages(broker, settings, STAGES if local else ()):
                await self._serve(broker, registry, until_done)
        finally:
            await broker.close()

    async def _serve(self, broker: Broker, registry: StreamRegistry, until_done: bool) -> None:
        cfg = self.settings.service
        app = build_app(registry, broker, ingest_metrics(registry), self.settings)
        server = _Server(uvicorn.Config(app, log_config=None))
        sock = bind(cfg.host, cfg.port)
        self.port = int(sock.getsockname()[1])
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="ingest-http")
        specs = [*self.settings.ingest.sources, *self.sources]
        sink = await self._sink(broker, specs)
        sink_task = asyncio.create_task(sink.run(self.stopping.is_set), name="ingest-results") if sink else None
        try:
            for spec in specs:
                try:
                    info = await registry.add(spec)
                except (ValueError, KeyError) as exc:  # one bad entry must not take every other camera down
                    log.error("source %s not started: %s", redact_url(spec.url), exc)
                    continue
                if sink is not None:
                    sink.follow(info.run, StreamTarget(info.id, registry.streams[info.id].source.target, spec.annotate))
            log.info("ingest on http://%s:%d (/v1/streams /healthz /readyz /metrics)", cfg.host, self.port)
            await self._wait(registry, until_done)
        finally:
            await registry.close()
            if sink is not None and until_done:
                await self._wait_results(sink, list(sink.targets))
            self.stopping.set()
            if sink is not None and sink_task is not None:
                await asyncio.gather(sink_task, return_exceptions=True)
                sink.close()
            server.should_exit = True
            await serving

    async def _sink(self, broker: Broker, specs: Sequence[StreamSource]) -> ResultsSink | None:
        if self.results is None and not any(s.annotate for s in specs):
            return None
        return await ResultsSink(broker, self.settings, self.results, f"ingest-{uuid.uuid4().hex[:6]}").open()

    async def _wait(self, registry: StreamRegistry, until_done: bool) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
                loop.add_signal_handler(sig, self.stopping.set)
        if not until_done:
            await self.stopping.wait()
            return
        ended = asyncio.create_task(registry.wait_ended())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    async def _wait_results(self, sink: ResultsSink, runs: list[str]) -> None:
        while not sink.done(runs) and not self.stopping.is_set():
            await asyncio.sleep(DONE_POLL_S)
