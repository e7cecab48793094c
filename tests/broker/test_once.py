"""What the server-side backends add to at-least-once: outputs settled once per key, heartbeats, byte bounds,
lost state, a full broker. Memory and Redis here (the memory broker must behave as Redis does); Kafka's
settle is a transaction, tested with its member (test_kafka_settle.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.broker.test_contract import take
from tests.servers import Server, start_redis
from visionpipe.broker import Broker, BrokerFull, BrokerStateLost, Output, Room, Settled, connect
from visionpipe.settings import Settings


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest, settings: Settings, ns: str) -> AsyncIterator[Broker]:
    url = f"memory://{ns}" if request.param == "memory" else request.getfixturevalue("redis_server").url
    b = await connect(url, settings)
    yield b
    await b.close()


async def test_a_once_key_settled_by_any_delivery_is_not_published_again(broker: Broker, ns: str) -> None:
    """Two copies of one submission (two entries, two consumers of one group): one output between them."""
    src, out = f"{ns}.in", f"{ns}.out"
    await broker.ensure(src, "g")
    await broker.publish(src, [b"copy", b"copy"])
    first = await take(broker, src, "g", "c1", 1)
    second = await take(broker, src, "g", "c2", 1)
    assert await broker.settle(src, "g", [Settled(first[0], (Output(out, b"A"),), f"{ns}.once.r1")]) == 0
    assert await broker.settle(src, "g", [Settled(second[0], (Output(out, b"A"),), f"{ns}.once.r1")]) == 1
    assert await broker.length(out) == 1
    assert (await broker.backlog(src, "g")).total == 0, "the duplicate is acked all the same"


async def test_one_once_key_twice_in_one_settle_publishes_once(broker: Broker, ns: str) -> None:
    src, out = f"{ns}.in", f"{ns}.out"
    await broker.ensure(src, "g")
    await broker.publish(src, [b"x", b"x"])
    got = await take(broker, src, "g", "c", 2)
    assert await broker.settle(src, "g", [Settled(d, (Output(out, b"A"),), f"{ns}.once.r") for d in got]) == 1
    assert await broker.length(out) == 1


async def test_touched_deliveries_are_not_reclaimed_untouched_ones_are(broker: Broker, ns: str) -> None:
    src = f"{ns}.in"
    await broker.ensure(src, "g")
    await broker.publish(src, [b"slow", b"dead"])
    slow, dead = sorted(await take(broker, src, "g", "worker", 2), key=lambda d: d.data, reverse=True)
    for _ in range(3):
        await asyncio.sleep(0.15)
        await broker.touch(src, "g", "worker", [slow])
    taken = await broker.reclaim(src, "g", "thief", min_idle_s=0.3, count=10)
    assert [d.data for d in taken] == [b"dead"], "only the delivery nobody touched is taken over"
    await broker.touch(src, "g", "worker", [dead])  # not ours any more: must not be taken back
    await asyncio.sleep(0.35)
    again = await broker.reclaim(src, "g", "other", min_idle_s=0.3, count=10)
    assert sorted(d.data for d in again) == [b"dead", b"slow"]
    assert {d.data: d.attempts for d in again} == {b"dead": 3, b"slow": 2}, "a touch counts no delivery"


async def test_publish_if_room_refuses_at_the_byte_bound_and_publishes_nothing(broker: Broker, ns: str) -> None:
    frames, results = f"{ns}.frames", f"{ns}.results"
    room = Room((frames, results), 200_000)
    assert await broker.publish_if_room(frames, [b"x" * 50_000], ["a"], room) is None
    await broker.publish(results, [b"r" * 200_000])  # results nobody reads still count
    held = await broker.publish_if_room(frames, [b"y"], ["b"], room)
    assert held is not None and held[results] >= 200_000 and held[frames] >= 50_000
    assert await broker.length(frames) == 1


async def test_a_lost_group_is_reported_as_lost_state(broker: Broker, ns: str) -> None:
    src = f"{ns}.in"
    await broker.ensure(src, "g")
    await broker.publish(src, [b"a"])
    (held,) = await take(broker, src, "g", "c", 1)
    await broker.delete(src)  # what a broker restarted without its data looks like
    with pytest.raises(BrokerStateLost) as info:
        await broker.consume(src, "g", "c", 1, 0.05)
    assert info.value.stream == src
    with pytest.raises(BrokerStateLost):
        await broker.reclaim(src, "g", "c", 0.0, 1)
    await broker.touch(src, "g", "c", [held])  # heartbeats and settles of what was lost pass quietly
    assert await broker.settle(src, "g", [Settled(held, (Output(f"{ns}.out", b"A"),), f"{ns}.once.a")]) == 0
    await broker.ensure(src, "g")
    assert await broker.consume(src, "g", "c", 1, 0.05) == []


@pytest.fixture
def full_redis(tmp_path: Path) -> Server:
    server = start_redis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    yield server  # type: ignore[misc]
    server.stop()


async def test_a_full_redis_refuses_publishes_but_settles_drain_it(
    full_redis: Server, settings: Settings, ns: str
) -> None:
    src = f"{ns}.in"
    async with await connect(full_redis.url, settings) as broker:
        await broker.ensure(src, "g")
        with pytest.raises(BrokerFull):
            for _ in range(10_000):
                await broker.publish(src, [b"y" * 20_000])
        with pytest.raises(BrokerFull):
            await broker.publish_if_room(f"{ns}.frames", [b"z"], [None], Room((src,), 2**40))
        held = await broker.length(src)
        got = await broker.consume(src, "g", "c", 50, 0.1)
        settled = [Settled(d, (Output(f"{ns}.out", b"small"),), f"{ns}.once.{d.id}") for d in got]
        assert await broker.settle(src, "g", settled) == 0, "a settle frees more than it adds: never refused"
        assert await broker.length(src) == held - 50
