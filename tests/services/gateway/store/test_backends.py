"""One results-backend contract, run unchanged against memory and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from tests.servers import Server
from visionpipe.services.gateway.store import MemoryResults, ResultsBackend, connect_results, results_url
from visionpipe.settings import load_settings


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, ns: str) -> AsyncIterator[ResultsBackend]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_server").url
    settings = load_settings(streams={"prefix": ns}, gateway={"results_url": url, "max_results": 50})
    store = await connect_results(settings)
    yield store
    await store.close()


async def test_a_stored_result_is_fetched_and_expires(backend: ResultsBackend) -> None:
    assert await backend.get("a", 0.0) is None
    await backend.store([("a", b'{"x": 1}'), ("b", b"{}")], ttl_s=0.3)
    assert await backend.get("a") == b'{"x": 1}' and await backend.fetch("b") == b"{}"
    await asyncio.sleep(0.45)
    assert await backend.get("a") is None


async def test_a_waiter_wakes_when_the_result_is_stored(backend: ResultsBackend) -> None:
    waiter = asyncio.create_task(backend.get("w", timeout_s=5.0))
    await asyncio.sleep(0.1)
    assert backend.waiting == 1 and not waiter.done()
    t0 = time.monotonic()
    await backend.store([("w", b"done")], ttl_s=10)
    assert await waiter == b"done"
    assert time.monotonic() - t0 < 0.5 and backend.waiting == 0
    assert await backend.get("never", timeout_s=0.2) is None  # the wait is bounded


async def test_admission_claims_an_id_once(backend: ResultsBackend) -> None:
    assert await backend.admit("r", "fp1", ttl_s=10) is None
    assert await backend.admit("r", "fp1", ttl_s=10) == "fp1"  # a retry: told what it was claimed with
    assert await backend.admit("r", "fp2", ttl_s=10) == "fp1"  # another image under the same id
    assert await backend.admitted("r") and not await backend.admitted("s")
    await backend.release("r")
    assert await backend.admit("r", "fp2", ttl_s=10) is None


async def test_memory_store_is_bounded_by_count() -> None:
    store = MemoryResults(max_results=10)
    for i in range(100):
        await store.store([(f"r{i}", b"x")], ttl_s=60)
        await store.admit(f"r{i}", "f", ttl_s=60)
    assert len(store) == 10 and await store.fetch("r99") == b"x" and await store.fetch("r0") is None
    assert len(store._admissions) <= 20


def test_the_store_follows_the_broker_unless_set() -> None:
    assert results_url(load_settings(broker={"url": "redis://h:1/0"})) == "redis://h:1/0"
    assert results_url(load_settings(broker={"url": "kafka://h:1"})) == "memory://"
    assert results_url(load_settings(broker={"url": "kafka://h:1"}, gateway={"results_url": "redis://r:2/0"})) == (
        "redis://r:2/0"
    )


async def test_redis_waiter_survives_a_dropped_subscription(redis_server: Server, ns: str) -> None:
    """A result published while the subscription is down is found from the key once it is back."""
    settings = load_settings(streams={"prefix": ns}, gateway={"results_url": redis_server.url})
    store = await connect_results(settings)
    other = await connect_results(settings)  # another replica, storing the result
    try:
        waiter = asyncio.create_task(store.get("gone", timeout_s=10.0))
        await asyncio.sleep(0.1)
        admin = redis.Redis.from_url(redis_server.url)
        admin.client_kill_filter(_type="pubsub")  # every replica's subscription drops
        await other.store([("gone", b"found")], ttl_s=30)
        t0 = time.monotonic()
        assert await waiter == b"found"
        assert time.monotonic() - t0 < 5.0  # the reconnect's catch-up, not the waiter's deadline
        assert admin.ttl(f"{ns}:result:gone") > 0  # nothing left without an expiry
        admin.close()
    finally:
        await store.close()
        await other.close()
