"""``visionpipe serve gateway``: the gateway on uvicorn, one process (scale with replicas), httptools and uvloop.

Both are pinned, not left to uvicorn's ``auto``: httptools for its speed and because the head limits in
``protocol.py`` are written for it, uvloop for the event loop. On SIGTERM the gateway stops admitting (503),
answers every request still waiting for a result with 503 and its request id (the result stays fetchable,
from any replica with Redis), and uvicorn then closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator, Sequence
from types import FrameType

import grpc
import uvicorn
from fastapi import APIRouter

from visionpipe.services.gateway.app import create_app
from visionpipe.services.gateway.oip.model import request_limit
from visionpipe.services.gateway.protocol import guarded_protocol
from visionpipe.services.gateway.service import Gateway
from visionpipe.settings import Settings

log = logging.getLogger(__name__)

# Idle keep-alive connections are closed after this: long enough for a client's next request, short for memory.
KEEP_ALIVE_S = 5
# Connections waiting to be accepted: bursts of new clients queue in the kernel instead of being refused.
BACKLOG = 2048
# After SIGTERM, in-flight answers (no longer waits: those are answered 503 at once) get this long to go out.
GRACEFUL_S = 10
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the gateway it is stopping as soon as a signal arrives."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.grpc: grpc.aio.Server | None = None
        self.grpc_port: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """HTTP first (its lifespan starts the gateway), then the Open Inference Protocol's gRPC port."""
        await super().startup(sockets)
        settings = self.gateway.settings
        if self.should_exit or settings.gateway.grpc_port < 0:
            return
        from visionpipe.services.gateway.oip.grpc_face import start_grpc  # protoc runs once, on first import

        limit = request_limit(settings)
        self.grpc, self.grpc_port = await start_grpc(
            self.gateway, settings.service.host, settings.gateway.grpc_port, limit
        )
        log.info("Open Inference Protocol gRPC on port %d", self.grpc_port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc is not None:
            await self.grpc.stop(GRACEFUL_S)
            self.grpc = None
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Signals handled on the loop, and not raised again once stopped (uvicorn's default): a clean stop
        exits 0, as every stage does."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info("signal %s: answering waiting requests with 503, then stopping", sig)
        self.gateway.stopping.set()
        super().handle_exit(sig, frame)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0), once started."""
        return int(self.servers[0].sockets[0].getsockname()[1])


def make_server(gateway: Gateway, routers: Sequence[APIRouter] = (), *, manage: bool = True) -> GatewayServer:
    settings = gateway.settings
    config = uvicorn.Config(
        create_app(gateway, routers, manage=manage),
        host=settings.service.host,
        port=settings.service.port,
        http=guarded_protocol(settings.gateway.header_timeout_s, settings.gateway.max_header_bytes),
        loop="none",  # the caller's loop (uvloop from `serve gateway`)
        lifespan="on",
        # It counts idle keep-alive connections too, so it cannot be the overload signal: the pipeline's
        # backlog is (429 from ingress backpressure).
        limit_concurrency=None,
        backlog=BACKLOG,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_S,
        access_log=False,
        server_header=False,
        log_config=None,  # our logging (visionpipe.logs), not uvicorn's
    )
    return GatewayServer(config, gateway)


async def serve_gateway(settings: Settings, routers: Sequence[APIRouter] = ()) -> None:
    """``visionpipe serve gateway``; with ``gateway.ingest_url``, the ingest service's /v1/streams beside the API."""
    gateway = Gateway(settings)
    if settings.gateway.ingest_url:
        from visionpipe.services.ingest.api import streams_router
        from visionpipe.services.ingest.remote import RemoteStreams

        # The ingest service takes the same tokens as this gateway: it is sent one of them.
        remote = RemoteStreams(settings.gateway.ingest_url, min(gateway.tokens) if gateway.tokens else None)
        routers = [*routers, streams_router(remote)]
    server = make_server(gateway, routers)
    await server.serve()
    log.info("gateway stopped")
