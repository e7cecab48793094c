"""Two gateway replicas over Redis: kill -9 the one clients wait on; their requests still finish, once each, and
every result can be fetched from the other replica (by id, or by retrying with the same request id)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.servers import Server
from tests.services.gateway.helpers import GatewayProc, http, jpeg
from visionpipe.broker import connect
from visionpipe.collector import Collector
from visionpipe.settings import load_settings
from visionpipe.topology import STAGES

REQUESTS = 8
AUDIT = "audit"  # a group of the test's own on the results stream: counts how often each request came out


def passthrough(stage: str, url: str, ns: str, logdir: Path) -> subprocess.Popen[bytes]:
    with (logdir / f"{stage}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.loadgen.passthrough", stage, "--broker", url],
            env={"VISIONPIPE_STREAMS__PREFIX": ns, "PATH": "/usr/bin:/bin"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_kill_9_while_requests_wait_loses_nothing(redis_server: Server, ns: str, tmp_path: Path) -> None:
    env = {"VISIONPIPE_BROKER__URL": redis_server.url, "VISIONPIPE_STREAMS__PREFIX": ns}
    settings = load_settings(broker={"url": redis_server.url}, streams={"prefix": ns})
    broker = await connect(settings=settings)
    audit = await Collector(broker, settings, AUDIT, "audit").open()
    doomed, survivor = GatewayProc(env, tmp_path).start(), GatewayProc(env, tmp_path).start()
    stages: list[subprocess.Popen[bytes]] = []
    images = {f"kill-{i}": jpeg(seed=i) for i in range(REQUESTS)}
    try:
        # The gateways come up before any stage (their requests queue): they serve, though not ready for a client.
        await asyncio.gather(*(asyncio.to_thread(g.wait_ready, 60.0, False) for g in (doomed, survivor)))
        async with aiohttp.ClientSession() as s:

            async def ask(rid: str) -> int:
                headers = {"Content-Type": "image/jpeg", "X-Request-Id": rid}
                async with s.post(doomed.url + "/v1/detect?timeout_ms=30000", data=images[rid], headers=headers) as r:
                    return r.status

            waiting = [asyncio.create_task(ask(rid)) for rid in images]

            async def all_waiting() -> bool:  # no stage runs yet: every request is queued, its client waiting
                return await broker.length(settings.streams.name("frames")) == REQUESTS

            await wait_for(all_waiting, 20, "requests did not reach the frames stream")
            doomed.kill()  # SIGKILL: no drain, no goodbye
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes

        stages = [passthrough(stage, redis_server.url, ns, tmp_path) for stage in STAGES]
        for rid, image in images.items():  # the client's retry, on the other replica, with the same id
            status, _, body = await asyncio.to_thread(
                http,
                "POST",
                survivor.url + "/v1/detect?timeout_ms=20000",
                image,
                {"Content-Type": "image/jpeg", "X-Request-Id": rid},
                30.0,
            )
            assert status == 200 and json.loads(body)["request_id"] == rid, (status, body[:200], survivor.log())
            status, _, body = await asyncio.to_thread(http, "GET", f"{survivor.url}/v1/results/{rid}")
            assert status == 200 and json.loads(body)["request_id"] == rid

        came_out: Counter[str] = Counter()

        async def audited() -> bool:
            batch = await audit.poll(0.2)
            came_out.update(env.request_id for env in batch.results)
            return set(came_out) >= set(images)

        await wait_for(audited, 20, f"results missing: {set(images) - set(came_out)}")
        assert all(came_out[rid] == 1 for rid in images), came_out  # each computed once: the retries joined it
    finally:
        doomed.kill()
        survivor.kill()
        for p in stages:
            p.terminate()
            p.wait(10)
        await broker.close()
