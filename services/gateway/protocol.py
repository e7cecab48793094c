"""uvicorn's httptools protocol with the two limits it lacks: a deadline on the request head and a size cap on it.

uvicorn never times out a connection that sends part of a request head (its keep-alive timer runs only between
requests, and each arriving byte cancels it), and httptools accepts headers of any size; an ASGI app cannot
help, since it is called only once the head is complete. So a slow-loris client could hold connections for
ever. This subclass closes a connection whose head is not complete within ``header_timeout_s`` and answers 400
to a head over ``max_header_bytes`` (httptools turns the exception into a parse error).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Per header line: the ": " and CRLF around a name and value.
HEADER_LINE_OVERHEAD = 4


class HeaderTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    max_header_bytes = 16 * 1024
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # nothing to answer: the request line itself may be incomplete

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._header_bytes = 0
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + HEADER_LINE_OVERHEAD)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            raise HeaderTooLarge()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request head on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, max_header_bytes: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with these limits (uvicorn takes a class, and builds one per connection)."""
    return type(
        "GatewayHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )
