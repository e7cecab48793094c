"""Deadlines at the gateway over a real socket: refused at admission, answered 504 naming the stage, never late
and silent; dead letters answered by their kind; readiness that waits for every stage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp
import pytest

from tests.loadgen.passthrough import run_stage
from tests.services.gateway.helpers import gateway_settings, jpeg, serving
from visionpipe import topology
from visionpipe.broker import MemoryBroker, wire
from visionpipe.envelope import Envelope
from visionpipe.hops import Expiry
from visionpipe.stage_state import READY, StageState
from visionpipe.topology import CLASSIFIER, DETECTOR, STAGES

JPEG = {"Content-Type": "image/jpeg"}


async def post(
    s: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str] = JPEG
) -> tuple[int, Mapping[str, str], dict]:
    async with s.post(url, data=body, headers=dict(headers)) as r:
        return r.status, r.headers.copy(), await r.json(content_type=None)


async def announce(broker: MemoryBroker, stream: str, stage: str, expected_s: float, seq: int) -> None:
    """A stage process's heartbeat, as one on another host would publish it."""
    record = StageState(stage, "elsewhere", READY, seq, time.time_ns(), 0.25, expected_s=expected_s, minimum_s=0.01)
    await broker.publish(stream, [record.encode()])


async def test_a_deadline_shorter_than_the_pipeline_expects_is_refused_with_a_computed_retry_after(ns: str) -> None:
    settings = gateway_settings(ns)
    async with serving(settings) as live, aiohttp.ClientSession() as s:
        broker = MemoryBroker(settings.broker.url)
        stream = topology.state_stream(settings)
        for seq in range(1, 200):  # until the gateway has read it
            await announce(broker, stream, DETECTOR, 2.4, seq)
            if live.gateway.board is not None and DETECTOR in live.gateway.board.figures():
                break
            await asyncio.sleep(0.02)
        status, headers, doc = await post(s, live.url + "/v1/detect", jpeg(), {**JPEG, "X-Deadline-Ms": "1000"})
        assert status == 429 and doc["error"] == "deadline_infeasible", doc
        assert headers["Retry-After"] == "2" and "current expected latency (2400 ms)" in doc["detail"]
        status, _, doc = await post(s, live.url + "/v1/detect?deadline_ms=5000", jpeg(seed=1))
        assert status == 200 and doc["deadline"] == {"met": True, "late_ms": 0.0}, doc
        status, _, doc = await post(s, live.url + "/v1/detect", jpeg(seed=2))
        assert status == 200 and "deadline" not in doc, "no deadline asked, none reported"


async def test_no_answer_by_the_deadline_is_a_504_at_the_deadline_and_the_late_result_says_so(ns: str) -> None:
    async with (
        serving(gateway_settings(ns), stall=lambda rid: 1.0 if rid == "slow" else 0.0) as live,
        aiohttp.ClientSession() as s,
    ):
        t0 = time.monotonic()
        status, _, doc = await post(
            s, live.url + "/v1/detect", jpeg(), {**JPEG, "X-Request-Id": "slow", "X-Deadline-Ms": "400"}
        )
        took = time.monotonic() - t0
        assert status == 504 and doc["error"] == "deadline_exceeded" and doc["stage"] == "pipeline", doc
        assert 0.35 < took < 0.9, "answered at the deadline, not at the wait's end"
        async with s.get(live.url + "/v1/results/slow?wait_ms=5000") as r:
            late = await r.json()
        assert r.status == 200 and late["deadline"]["met"] is False and late["deadline"]["late_ms"] > 500
        assert late["deadline"]["stage"] in STAGES


async def test_a_stage_s_early_answer_and_each_dead_letter_kind_map_to_their_status(ns: str) -> None:
    settings = gateway_settings(ns)
    async with serving(settings, stages=False) as live, aiohttp.ClientSession() as s:  # nothing computes them
        broker = MemoryBroker(settings.broker.url)
        for rid in ("exp", "gave", "dl", "bad"):
            status, _, _ = await post(s, live.url + "/v1/requests", jpeg(), {**JPEG, "X-Request-Id": rid})
            assert status == 202
        # Each answer built from the message the gateway published, as a stage's is: it carries the submission.
        sent = await broker.peek(settings.streams.name("frames"), 10)
        frames = {env.request_id: env for env in (Envelope.decode(wire(d.data)) for d in sent)}
        answer = Expiry(DETECTOR, 42.0, "queue").write(frames["exp"])
        await broker.publish(settings.streams.name("results"), [answer.encode()])
        dead = settings.streams.name("dead_letter")
        letters = [
            ("gave", "gave up after 3 deliveries", CLASSIFIER),
            ("dl", "deadline passed 5 ms before detector took it", DETECTOR),
            ("bad", "not an image", "decode"),
        ]
        for rid, reason, stage in letters:
            data = frames[rid].encode()
            await broker.dead_letter(dead, reason=reason, data=data, stage=stage, origin="x", request_id=rid)
        expected = {
            "exp": (504, "deadline_exceeded"),
            "gave": (500, "gave_up"),
            "dl": (504, "deadline_exceeded"),
            "bad": (422, "bad_image"),
        }
        for rid, (code, error) in expected.items():
            async with s.get(live.url + f"/v1/results/{rid}?wait_ms=5000") as r:
                doc = await r.json()
                assert (r.status, doc["error"]) == (code, error), (rid, doc)
        async with s.get(live.url + "/v1/results/exp") as r:
            doc = await r.json()
        assert doc["stage"] == DETECTOR and doc["late_ms"] == pytest.approx(42.0) and "42 ms late" in doc["detail"]


async def test_readiness_waits_for_every_stage_to_announce_itself_ready(ns: str) -> None:
    settings = gateway_settings(ns)
    async with serving(settings, stages=False) as live, aiohttp.ClientSession() as s:
        async with s.get(live.url + "/readyz") as r:
            doc = await r.json()
        assert r.status == 503 and doc["checks"]["stages"] is False
        assert doc["stages"] == dict.fromkeys(STAGES, "missing")
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_stage(stage, settings, stop)) for stage in STAGES]
        try:
            for _ in range(200):
                async with s.get(live.url + "/readyz") as r:
                    doc = await r.json()
                if r.status == 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status == 200 and doc["stages"] == dict.fromkeys(STAGES, READY), doc
            status, _, _ = await post(s, live.url + "/v1/detect", jpeg())
            assert status == 200, "ready means a request sent now is served"
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        for _ in range(100):  # a stage that stops says so, and readiness drops at once
            async with s.get(live.url + "/readyz") as r:
                doc = await r.json()
            if r.status == 503:
                break
            await asyncio.sleep(0.05)
        assert r.status == 503 and doc["stages"][DETECTOR] == "stopping"
