"""Broker fixtures: one opened broker per backend, with settings tuned for quick tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.servers import TANSU_URLS
from visionpipe.broker import Broker, connect
from visionpipe.settings import Settings, load_settings

# Tansu reports a partition's end offset as the last record *batch*'s base offset + 1, so backlog
# is only exact when every record is its own batch; real Kafka needs no such setting.
TANSU_EXACT_OFFSETS = "producer.batch.num.messages=1"


def client_url(url: str) -> str:
    """The fixture URL, with the client properties a test broker needs (Tansu's; Apache Kafka needs none)."""
    if url in TANSU_URLS:
        return f"{url}?{TANSU_EXACT_OFFSETS}"
    return url


@pytest.fixture
def settings() -> Settings:
    # Tansu answers a group join after about half the session timeout: 2 s keeps joins near 1 s.
    return load_settings(
        broker={
            "connect_retries": 3,
            "connect_backoff_s": 0.05,
            "kafka_session_timeout_ms": 2000,
            "kafka_heartbeat_ms": 300,
        }
    )


@pytest.fixture
async def broker(broker_url: str, settings: Settings) -> AsyncIterator[Broker]:
    b = await connect(client_url(broker_url), settings)
    yield b
    await b.close()
