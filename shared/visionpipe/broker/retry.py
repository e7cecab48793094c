"""Connecting at start-up, for every server backend, in one function: retried briefly, then one clear line.

Services start in any order under compose or Kubernetes, so the broker may be a few seconds behind: a
client retries with capped exponential backoff, logging each try (with the URL redacted). But a person who
typed a wrong host or port, or forgot to start the server, should hear so in seconds, not after minutes of
warnings and a traceback: the whole start-up wait is bounded by ``broker.connect_timeout_s``, and what is
raised then names the address and what to check. A broker that was up and went away later is another
matter: the stages' loops keep retrying it for as long as it takes (``services/runtime/worker.py``).
Wrong credentials or TLS are not retried: they will not fix themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from visionpipe.backoff import Backoff
from visionpipe.broker.base import BrokerError, BrokerUnreachable
from visionpipe.broker.security import BrokerAuthError, redact_url

if TYPE_CHECKING:
    from visionpipe.settings import Settings

log = logging.getLogger("visionpipe.broker")
T = TypeVar("T")
# The shortest try worth making: a connect to a live server on a LAN takes a few milliseconds.
MIN_ATTEMPT_S = 0.1

# What to check, per kind of broker, when nothing answers.
CHECK = {
    "redis": "is redis-server running there (redis-cli -h {host} -p {port} ping), and are the host and port right?",
    "kafka": "is a Kafka broker listening there, and is that the address it advertises?",
}


async def with_retries(attempt: Callable[[], Awaitable[T]], url: str, settings: Settings) -> T:
    """Run ``attempt`` until it succeeds, retrying :class:`BrokerError` with backoff, within the connect deadline.

    Raises :class:`BrokerUnreachable` (one line: the address, the last error, what to check) once
    ``broker.connect_timeout_s`` has passed or ``broker.connect_retries`` tries have failed;
    :class:`BrokerAuthError` and anything else propagate at once.
    """
    b = settings.broker
    backoff = Backoff(b.connect_backoff_s, b.connect_backoff_max_s)
    start = time.monotonic()
    deadline = start + b.connect_timeout_s
    tries = max(1, b.connect_retries)
    for n in range(1, tries + 1):
        try:
            # An attempt that hangs (a firewall dropping packets) must not outlive the deadline either.
            return await asyncio.wait_for(attempt(), timeout=max(deadline - time.monotonic(), MIN_ATTEMPT_S))
        except BrokerAuthError:
            raise
        except (BrokerError, TimeoutError) as exc:
            now = time.monotonic()
            if n == tries or now >= deadline - MIN_ATTEMPT_S:
                waited = f"{n} tries in {now - start:.1f} s" if n == tries else f"{b.connect_timeout_s:g} s"
                raise BrokerUnreachable(unreachable(url, waited, _said_once(url, exc))) from exc
            delay = min(backoff.next(), deadline - now - MIN_ATTEMPT_S)  # the last try lands on the deadline
            log.info(
                "broker not ready, retrying",
                extra={"url": redact_url(url), "try": n, "retry_in_s": round(delay, 2), "error": _said_once(url, exc)},
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _said_once(url: str, exc: BaseException) -> str:
    """The error without the address it starts with (the line names it already)."""
    return (str(exc) or "no answer").removeprefix(f"{_family(url)} {redact_url(url)}").lstrip(": ")


# How a connection cut off by the server reads in redis-py's and the OS's words.
CUT_OFF = ("connection reset", "closed by server", "broken pipe", "eof occurred")


def unreachable(url: str, waited: str, error: str) -> str:
    """The one line a person reads when the broker never answered."""
    parts = urlsplit(url)
    family = _family(url)
    host, port = (parts.hostname, parts.port) if family == "redis" else (None, None)
    check = CHECK.get(family, "is it running, and are the host and port right?")
    check = check.format(host=host or "localhost", port=port or 6379)
    if parts.scheme == "rediss" and any(s in error.lower() for s in CUT_OFF):
        # A server that refuses our certificate (or our lack of one) after TLS 1.3's handshake may close with our
        # first command unread: a reset, and its alert never reaches us.
        check = f"TLS to {parts.hostname} may have been refused (a client certificate it requires?); {check}"
    return (
        f"cannot reach the broker at {redact_url(url)} (no answer in {waited}; last error: {error}) — {check} "
        "(VISIONPIPE_BROKER__CONNECT_TIMEOUT_S waits longer)"
    )


def _family(url: str) -> str:
    scheme = urlsplit(url).scheme
    return "redis" if scheme == "rediss" else scheme


class ConnectFailuresHeld(logging.Filter):
    """Drops a client library's own "cannot connect" lines while start-up is still trying.

    librdkafka logs every refused or unresolved connection to its bootstrap server (several a second, at
    ERROR); while :func:`with_retries` is trying, they say nothing its own lines and the final one do not.
    Every other line (a refused login, a TLS failure) still goes through.
    """

    SAID_BY_US = ("Connect to ", "Failed to resolve", "Connection refused", "timed out")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("FAIL") and any(s in text for s in self.SAID_BY_US))
