"""What the gateway's reader leaves behind: on Redis no results in the stream once stored (bounded by its acks,
never by a length), every result as JSON on a feed of its own, that feed trimmed by age; on Kafka a group per
replica, so each replica can answer for every result."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import redis

from tests.servers import Server
from tests.services.gateway.helpers import gateway_settings, jpeg, serving
from visionpipe.broker import connect


async def test_results_are_acked_fed_out_as_json_and_kept_with_an_expiry(redis_server: Server, ns: str) -> None:
    settings = gateway_settings(ns, redis_server.url)
    async with serving(settings) as live, aiohttp.ClientSession() as s:
        async with s.post(live.url + "/v1/detect", data=jpeg(), headers={"Content-Type": "image/jpeg"}) as r:
            assert r.status == 200
            rid = (await r.json())["request_id"]
        admin = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 5
        while admin.xlen(f"{ns}.results") and time.monotonic() < deadline:  # the ack trims what every group read
            await asyncio.sleep(0.05)
        assert admin.xlen(f"{ns}.results") == 0
        ((_, fields),) = admin.xrange(f"{ns}.results-json")
        doc = json.loads(fields[b"d"])
        assert doc["request_id"] == rid and doc["status"] == "done" and doc["objects"]
        assert 0 < admin.ttl(f"{ns}:result:{rid}") <= settings.gateway.result_ttl_s
        assert [k for k in admin.scan_iter(f"{ns}:*") if admin.ttl(k) < 0] == []  # nothing kept for ever
        admin.close()


async def test_the_feed_is_trimmed_by_age_on_redis(redis_server: Server, ns: str) -> None:
    broker = await connect(settings=gateway_settings(ns, redis_server.url))
    feed = f"{ns}.feed"
    try:
        await broker.publish(feed, [b"old"])
        await asyncio.sleep(1.1)
        await broker.publish(feed, [b"new"])
        await broker.trim_older(feed, age_s=0.5)
        assert [d.data for d in await broker.peek(feed, 10)] == [b"new"]
    finally:
        await broker.close()


async def test_on_kafka_each_replica_reads_every_result_into_its_own_store(kafka_server: Server, ns: str) -> None:
    """No shared store with Kafka: a group per replica, so whichever replica a client waits on has the result."""
    settings = gateway_settings(ns, kafka_server.url, gateway={"wait_s": 30.0, "max_wait_s": 60.0})
    async with serving(settings) as live, aiohttp.ClientSession() as s:
        assert live.gateway.reader is not None and live.gateway.reader.collector.group.startswith("gateway-")
        async with s.post(live.url + "/v1/detect", data=jpeg(), headers={"Content-Type": "image/jpeg"}) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        assert doc["objects"]
        assert live.gateway.reader.feeder is not None  # fed from a group the replicas share: once per result
        feed = f"{ns}.results-json"
        await live.gateway.broker.ensure(feed, "outsider")
        got = []
        for _ in range(20):
            got += await live.gateway.broker.consume(feed, "outsider", "o", 10, 0.5)
            if got:
                break
        assert [json.loads(d.data)["request_id"] for d in got] == [doc["request_id"]]
