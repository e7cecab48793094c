"""Pluggable broker layer: pick a backend by URL scheme.

``memory://[name]`` in-process (default), ``redis://`` / ``rediss://`` Redis
Streams, ``kafka://host:port[,host:port]`` Kafka through confluent-kafka.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from visionpipe.broker.base import (
    Backlog,
    Broker,
    BrokerError,
    BrokerFull,
    BrokerStateLost,
    BrokerUnreachable,
    DeadLetter,
    Delivery,
    Output,
    Payload,
    Retention,
    Room,
    Settled,
    retained_streams,
    wire,
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
    "BrokerUnreachable",
    "DeadLetter",
    "Delivery",
    "MemoryBroker",
    "Output",
    "Payload",
    "Retention",
    "Room",
    "Settled",
    "check_url",
    "connect",
    "redact_url",
    "wire",
]

SCHEMES = ("memory", "redis", "rediss", "kafka")
FORMS = "memory://, redis://HOST:PORT/DB, rediss://HOST:PORT/DB or kafka://HOST:PORT[,HOST:PORT]"


def check_url(url: str) -> None:
    """Raise ValueError, in one line, for a broker URL no backend can use: checked before anything slow starts."""
    parts = urlsplit(url)
    shown = repr(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())  # never the credentials
    if parts.scheme not in SCHEMES:
        raise ValueError(f"broker URL {shown}: unknown scheme {parts.scheme!r}; use {FORMS}")
    if parts.scheme == "memory":
        return
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ValueError(f"broker URL {shown} names no host; use {FORMS}")
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host and not host.endswith("]") else (host, "", "")
        if not name:
            raise ValueError(f"broker URL {shown}: {host!r} names no host")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"broker URL {shown}: port {port!r} is not a port number (1-65535)")


async def connect(url: str | None = None, settings: Settings | None = None) -> Broker:
    """Open the broker named by ``url`` (default: the settings' URL), retrying within the connect deadline."""
    if settings is None:
        from visionpipe.settings import load_settings

        settings = load_settings()
    url = url or settings.broker.url
    check_url(url)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker(url, once_ttl_s=settings.broker.dedupe_ttl_s, retained=retained_streams(settings))
    if scheme in ("redis", "rediss"):
        from visionpipe.broker.redis_streams import RedisBroker

        return await RedisBroker.connect(url, settings)
    from visionpipe.broker.kafka import KafkaBroker
    from visionpipe.broker.kafka_config import RDKAFKA_LOGGER
    from visionpipe.broker.retry import ConnectFailuresHeld

    held, rdkafka = ConnectFailuresHeld(), logging.getLogger(RDKAFKA_LOGGER)
    rdkafka.addFilter(held)
    try:
        return await KafkaBroker.connect(url, settings)
    finally:
        rdkafka.removeFilter(held)
