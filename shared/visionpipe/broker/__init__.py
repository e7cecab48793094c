"""Pluggable broker layer: pick a backend by URL scheme.

``memory://[name]`` in-process (default), ``redis://`` / ``rediss://`` Redis
Streams, ``kafka://host:port[,host:port]`` Kafka through confluent-kafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from visionpipe.broker.base import (
    Backlog,
    Broker,
    BrokerError,
    BrokerFull,
    BrokerStateLost,
    DeadLetter,
    Delivery,
    Output,
    Retention,
    Room,
    Settled,
    retained_streams,
)
from visionpipe.broker.memory import MemoryBroker
from visionpipe.broker.security import BrokerAuthError, redact_url

if TYPE_CHECKING:
    from visionpipe.settings import Settings

__all__ = [
    "Backlog",
    "Broker",
    "BrokerAuthError",
    "BrokerError",
    "BrokerFull",
    "BrokerStateLost",
    "DeadLetter",
    "Delivery",
    "MemoryBroker",
    "Output",
    "Retention",
    "Room",
    "Settled",
    "connect",
    "redact_url",
]

SCHEMES = ("memory", "redis", "rediss", "kafka")


async def connect(url: str | None = None, settings: Settings | None = None) -> Broker:
    """Open the broker named by ``url`` (default: the settings' URL), retrying with backoff."""
    if settings is None:
        from visionpipe.settings import load_settings

        settings = load_settings()
    url = url or settings.broker.url
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker(url, once_ttl_s=settings.broker.dedupe_ttl_s, retained=retained_streams(settings))
    if scheme in ("redis", "rediss"):
        from visionpipe.broker.redis_streams import RedisBroker

        return await RedisBroker.connect(url, settings)
    if scheme == "kafka":
        from visionpipe.broker.kafka import KafkaBroker

        return await KafkaBroker.connect(url, settings)
    raise ValueError(f"unknown broker URL scheme {scheme!r} in {url!r}; use one of {', '.join(SCHEMES)}")
