"""Connection retries for every server backend, in one function.

Services start in any order under compose or Kubernetes, so the broker may
not be up yet: a stage retries with capped exponential backoff and logs each
try (with the URL redacted). Wrong credentials or TLS are not retried: they
will not fix themselves, and twenty identical failures hide the cause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from visionpipe.backoff import Backoff
from visionpipe.broker.base import BrokerError
from visionpipe.broker.security import BrokerAuthError, redact_url

if TYPE_CHECKING:
    from visionpipe.settings import Settings

log = logging.getLogger("visionpipe.broker")
T = TypeVar("T")


async def with_retries(attempt: Callable[[], Awaitable[T]], url: str, settings: Settings) -> T:
    """Run ``attempt`` until it succeeds, retrying :class:`BrokerError` with backoff.

    Raises the last :class:`BrokerError` after ``connect_retries`` tries;
    :class:`BrokerAuthError` and anything else propagate at once.
    """
    b = settings.broker
    backoff = Backoff(b.connect_backoff_s, b.connect_backoff_max_s)
    tries = max(1, b.connect_retries)
    for n in range(1, tries + 1):
        try:
            return await attempt()
        except BrokerAuthError:
            raise
        except BrokerError as exc:
            if n == tries:
                raise BrokerError(f"broker {redact_url(url)} unreachable after {tries} tries: {exc}") from exc
            delay = backoff.next()
            log.warning(
                "broker not ready, retrying",
                extra={"url": redact_url(url), "try": n, "of": tries, "retry_in_s": round(delay, 2), "error": str(exc)},
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
