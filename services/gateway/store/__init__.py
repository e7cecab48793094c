"""Where finished requests wait to be fetched: a results backend with a TTL and a blocking get.

``memory://`` keeps them in this process (bounded by count and age); ``redis://`` / ``rediss://`` keeps them
under keys with an expiry, shared by every replica of the gateway, with a pub/sub wake-up so the replica that
waits for a result hears of it whichever replica stored it. Picked by URL, like the broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from visionpipe.services.gateway.store.base import Claim, Finished, ResultsBackend
from visionpipe.services.gateway.store.memory import MemoryResults

if TYPE_CHECKING:
    from visionpipe.settings import Settings

__all__ = ["Claim", "Finished", "MemoryResults", "ResultsBackend", "connect_results", "results_url"]


def results_url(settings: Settings) -> str:
    """The store's URL: the setting, else the broker when it is Redis (one server for both), else memory."""
    if settings.gateway.results_url:
        return settings.gateway.results_url
    if urlsplit(settings.broker.url).scheme in ("redis", "rediss"):
        return settings.broker.url
    return "memory://"


async def connect_results(settings: Settings) -> ResultsBackend:
    """Open the results store named by :func:`results_url`; keys live under ``streams.prefix``."""
    url = results_url(settings)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryResults(settings.gateway.max_results)
    if scheme in ("redis", "rediss"):
        from visionpipe.services.gateway.store.redis_backend import RedisResults

        return await RedisResults.connect(url, settings)
    raise ValueError(f"unknown results store URL scheme {scheme!r}; use memory://, redis:// or rediss://")
