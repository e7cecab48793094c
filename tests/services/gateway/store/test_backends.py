"""One results-backend contract, run unchanged against memory and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from tests.servers import Server
from visionpipe.services.gateway.store import (
    Claim,
    Finished,
    MemoryResults,
    ResultsBackend,
    connect_results,
    results_url,
)
from visionpipe.services.gateway.store.base import UNKNOWN
from visionpipe.settings import load_settings


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, ns: str) -> AsyncIterator[ResultsBackend]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_server").url
    settings = load_settings(streams={"prefix": ns}, gateway={"results_url": url, "max_results": 50})
    store = await connect_results(settings)
    yield store
    await store.close()


A = Claim("fp-a", 1)
B = Claim("fp-b", 2)


def done(request_id: str, claim: Claim, doc: bytes) -> Finished:
    return Finished(request_id, claim.submission, doc)


async def test_a_stored_result_is_fetched_and_expires(backend: ResultsBackend) -> None:
    assert await backend.get("a", 1, 0.0) is None
    await backend.store([done("a", A, b'{"x": 1}'), done("b", B, b"{}")], ttl_s=0.3)
    assert await backend.get("a", 1) == b'{"x": 1}' and await backend.fetch("b", 2) == b"{}"
    assert await backend.fetch("a", 2) is None  # bound to its submission: not another's
    await asyncio.sleep(0.45)
    assert await backend.get("a", 1) is None


async def test_a_waiter_wakes_when_the_result_is_stored(backend: ResultsBackend) -> None:
    waiter = asyncio.create_task(backend.get("w", 1, timeout_s=5.0))
    await asyncio.sleep(0.1)
    assert backend.waiting == 1 and not waiter.done()
    t0 = time.monotonic()
    await backend.store([done("w", A, b"done")], ttl_s=10)
    assert await waiter == b"done"
    assert time.monotonic() - t0 < 0.5 and backend.waiting == 0
    assert await backend.get("never", 1, timeout_s=0.2) is None  # the wait is bounded


async def test_admission_claims_an_id_once(backend: ResultsBackend) -> None:
    assert await backend.admit("r", A, ttl_s=10) is None
    assert await backend.admit("r", A, ttl_s=10) == A  # a retry: told what it was claimed with
    assert await backend.admit("r", B, ttl_s=10) == A  # another image under the same id
    assert await backend.claimed("r") == A and await backend.claimed("s") is None
    await backend.release("r", B)  # not its claim: nothing happens
    assert await backend.claimed("r") == A
    await backend.release("r", A)
    assert await backend.admit("r", B, ttl_s=10) is None


async def test_a_result_keeps_its_claim_as_long_as_it_lives(backend: ResultsBackend) -> None:
    """The claim expires a TTL after submission, the result a TTL after completion: the claim follows the result."""
    await backend.admit("r", A, ttl_s=0.3)
    await asyncio.sleep(0.2)
    await backend.store([done("r", A, b"a's boxes")], ttl_s=0.3)
    await asyncio.sleep(0.2)  # past the claim's own expiry, within the result's
    assert await backend.claimed("r") == A
    assert await backend.admit("r", B, ttl_s=10) == A  # another image is refused while A's result is there
    await asyncio.sleep(0.25)
    assert await backend.admit("r", B, ttl_s=10) is None  # both gone: the id is free


async def test_a_late_result_of_an_expired_claim_never_reaches_the_new_image(backend: ResultsBackend) -> None:
    await backend.admit("r", A, ttl_s=0.1)
    await asyncio.sleep(0.15)
    assert await backend.admit("r", B, ttl_s=10) is None  # A's claim expired: B takes the id
    waiter = asyncio.create_task(backend.get("r", B.submission, timeout_s=0.5))
    await backend.store([done("r", A, b"a's boxes")], ttl_s=10)  # A's result comes in late
    assert await waiter is None and await backend.fetch("r", A.submission) is None
    await backend.store([done("r", B, b"b's boxes")], ttl_s=10)
    assert await backend.get("r", B.submission) == b"b's boxes"


async def test_a_result_without_a_claim_makes_one_of_an_unknown_image(backend: ResultsBackend) -> None:
    await backend.store([done("fresh", A, b"boxes")], ttl_s=10)
    assert await backend.claimed("fresh") == Claim(UNKNOWN, A.submission)
    assert await backend.fetch("fresh", A.submission) == b"boxes"


async def test_memory_store_is_bounded_by_count() -> None:
    store = MemoryResults(max_results=10)
    for i in range(100):
        await store.store([done(f"r{i}", A, b"x")], ttl_s=60)
        await store.admit(f"q{i}", A, ttl_s=60)
    assert len(store) == 10 and await store.fetch("r99", 1) == b"x" and await store.fetch("r0", 1) is None
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
        waiter = asyncio.create_task(store.get("gone", 1, timeout_s=10.0))
        await asyncio.sleep(0.1)
        admin = redis.Redis.from_url(redis_server.url)
        admin.client_kill_filter(_type="pubsub")  # every replica's subscription drops
        await other.store([done("gone", A, b"found")], ttl_s=30)
        t0 = time.monotonic()
        assert await waiter == b"found"
        assert time.monotonic() - t0 < 5.0  # the reconnect's catch-up, not the waiter's deadline
        assert admin.ttl(f"{ns}:result:gone") > 0  # nothing left without an expiry
        admin.close()
    finally:
        await store.close()
        await other.close()
