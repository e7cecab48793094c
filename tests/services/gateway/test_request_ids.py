"""A reused request id never gets another image's result: around the TTL edges, through the real gateway."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.servers import Server
from tests.services.gateway.helpers import gateway_settings, jpeg, serving

JPEG = {"Content-Type": "image/jpeg"}
TTL_S = 2.0


async def detect(s: aiohttp.ClientSession, url: str, image: bytes, rid: str) -> tuple[int, dict]:
    async with s.post(url + "/v1/detect?timeout_ms=8000", data=image, headers={**JPEG, "X-Request-Id": rid}) as r:
        return r.status, await r.json(content_type=None)


async def until(t0: float, at_s: float) -> None:
    await asyncio.sleep(max(0.0, t0 + at_s - time.monotonic()))


async def test_an_id_reused_between_the_claims_and_the_results_expiry_is_refused(ns: str) -> None:
    """The repro: A is slow, so its result outlives its claim; B under the same id then got A's boxes, as a 200."""
    slow = {"A": 1.0}

    def stall(rid: str) -> float:
        return slow.pop("A", 0.0)  # the first request through a stage waits a second, once

    a, b = jpeg(640, 480, seed=1), jpeg(320, 200, seed=2)
    settings = gateway_settings(ns, gateway={"result_ttl_s": TTL_S})
    async with serving(settings, stall=stall) as live, aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        status, doc = await detect(s, live.url, a, "x")
        assert status == 200 and doc["image"] == {"width": 640, "height": 480, "orientation": 1}
        await until(t0, TTL_S + 0.2)  # past A's claim (a TTL after submission), within its result (after completion)
        status, doc = await detect(s, live.url, b, "x")
        assert status == 409 and doc["error"] == "request_id_conflict", doc
        async with s.get(live.url + "/v1/results/x") as r:
            assert r.status == 200 and (await r.json())["image"]["width"] == 640  # still A's, for A's client
        await until(t0, 2 * TTL_S + 1.5)  # A's result and claim gone: the id is free
        status, doc = await detect(s, live.url, b, "x")
        assert status == 200 and doc["image"] == {"width": 320, "height": 200, "orientation": 1}, doc


async def test_a_result_that_comes_after_its_claim_expired_is_not_the_new_images(ns: str, redis_server: Server) -> None:
    """A is stuck past its TTL; B takes the id; A's result arrives late and is dropped; B gets its own."""
    stalls = {"first": TTL_S + 1.0}

    def stall(rid: str) -> float:
        return stalls.pop("first", 0.0)

    a, b = jpeg(640, 480, seed=3), jpeg(320, 200, seed=4)
    settings = gateway_settings(ns, redis_server.url, gateway={"result_ttl_s": TTL_S})
    async with serving(settings, stall=stall) as live, aiohttp.ClientSession() as s:
        first = asyncio.create_task(detect(s, live.url, a, "y"))
        await asyncio.sleep(TTL_S + 0.3)  # A's claim has expired; A is still in the pipeline
        status, doc = await detect(s, live.url, b, "y")
        assert status == 200 and doc["image"] == {"width": 320, "height": 200, "orientation": 1}, doc
        status, doc = await first  # A's client waited on A's submission: a late result, or none, never B's
        assert status == 504 or doc["image"] == {"width": 640, "height": 480, "orientation": 1}, doc
        async with s.get(live.url + "/v1/results/y") as r:
            assert r.status == 200 and (await r.json())["image"]["width"] == 320
