"""``/healthz``, ``/readyz`` and ``/metrics`` over a minimal HTTP/1.1 server on the stage's event loop.

On the event loop rather than a thread so that ``/healthz`` proves the loop
itself still turns (a wedged loop stops answering and the orchestrator
restarts the pod), and ``/readyz`` can await the broker's ping. Compute runs
in worker threads, so a long batch does not delay the answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from visionpipe.metrics import Metrics

log = logging.getLogger(__name__)

# A probe that sends nothing for this long is dropped; kubelet probes finish in milliseconds.
READ_TIMEOUT_S = 5.0
# Readiness checks ping the broker; a broker that takes longer than this is as good as down to a probe.
READY_TIMEOUT_S = 2.0

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


class HealthServer:
    """Serves the three endpoints; ``ready`` returns named checks, all true means ready."""

    def __init__(self, metrics: Metrics, ready: ReadyCheck, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.metrics = metrics
        self.ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("health and metrics on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = await self._route(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            try:
                checks = await asyncio.wait_for(self.ready(), READY_TIMEOUT_S)
            except Exception as exc:  # a failing check means not ready, never a crashed server
                checks = {"error": False}
                log.warning("readiness check failed: %s", exc)
            ok = bool(checks) and all(checks.values())
            body = json.dumps({"ready": ok, "checks": checks}).encode() + b"\n"
            return ("200 OK" if ok else "503 Service Unavailable"), "application/json", body
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition()
        return "404 Not Found", "text/plain", b"not found\n"
