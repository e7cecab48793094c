"""A Redis that comes back empty, and a Redis that is full: the pipeline survives both without a restart.

Both run against one pipeline of their own on a redis-server *without* persistence (what compose shipped
before, and what a new volume or a flushed server looks like): restarting it loses everything it held.

* Empty restart: every stage finds its group gone (NOGROUP), says so loudly, counts it in
  ``visionpipe_broker_resets_total``, makes its streams and group again and carries on; each new request
  must come out within 5 s of its submission. What the broker held is lost, and the test counts it.
* Full: ``maxmemory`` just above what Redis holds. Ingress must refuse with a ``Backpressure`` that says the
  broker is full (never a raw redis error), the stages must keep settling (that is what frees memory), and
  every admitted request must end with exactly one result once the pressure is gone.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.conftest import Pipeline
from tests.reliability.harness import (
    Processes,
    Sink,
    frames,
    http_get,
    redis_client,
    reliability_overrides,
    settings_of,
    settle_backlogs,
    stage_env,
)
from tests.servers import start_redis
from visionpipe.broker import BrokerError, connect
from visionpipe.ingress import Backpressure, Frame, submit_images
from visionpipe.settings import Settings

SERVE_WITHIN_S = 5.0
AFTER_RESTART = 5
# Room above what Redis holds when the test starts: a dozen of the tests' decoded tensors (320x320x3 bytes each).
FULL_HEADROOM_BYTES = 3 * 2**20
# Offered faster than the light pipeline serves on 2 cores (it keeps up with 20/s, and then Redis never fills):
# the detector's input backs up until Redis refuses; the offer stops a few refusals after that.
FULL_MAX_OFFERED, FULL_RATE, FULL_REFUSALS = 400, 100.0, 10
RESETS = re.compile(rb'visionpipe_broker_resets_total\{stage="(\w+)"\} (\S+)')


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    work = Path(tmp_path_factory.mktemp("redis-scratch"))
    server = start_redis(work)  # no persistence: a restart comes back empty
    overrides = reliability_overrides(f"bs{uuid.uuid4().hex[:8]}", server.url)
    procs = Processes(stage_env(overrides), work)
    try:
        yield Pipeline(server, overrides, settings_of(overrides), procs, procs.pipeline())
    finally:
        procs.close()
        server.stop()


async def _submit(broker_settings: Settings, broker: object, frame: Frame) -> str:
    """Submit one frame, riding out the moments while the client's connections find the restarted server."""
    deadline = time.monotonic() + 10
    while True:
        try:
            (rid,) = await submit_images(broker, broker_settings, [frame], wait_s=5)  # type: ignore[arg-type]
            return rid
        except BrokerError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_broker_restarted_empty_is_survived_and_new_requests_served_within_5s(scratch: Pipeline) -> None:
    s, tag = scratch.settings, f"e{uuid.uuid4().hex[:6]}"
    async with await connect(settings=s) as broker:
        sink = await Sink(broker, s).open()
        warm = await submit_images(
            broker, s, [Frame(im, request_id=f"{tag}-warm-{i}") for i, im in enumerate(frames(4, seed=51))]
        )
        await sink.results_for(set(warm), timeout_s=90)
        doomed = await submit_images(
            broker, s, [Frame(im, request_id=f"{tag}-held-{i}") for i, im in enumerate(frames(8, seed=52))]
        )
        scratch.server.stop(kill=True)
        await asyncio.to_thread(scratch.server.start)  # the same port, nothing in it
        served: list[float] = []
        for i, im in enumerate(frames(AFTER_RESTART, seed=53)):
            rid = await _submit(s, broker, Frame(im, request_id=f"{tag}-after-{i}"))
            t0 = time.monotonic()
            await sink.results_for({rid}, timeout_s=SERVE_WITHIN_S)
            served.append(time.monotonic() - t0)
        await asyncio.sleep(1.0)
        await sink.poll(0.5)
        survived = [rid for rid in doomed if rid in sink.seen]
        assert await settle_backlogs(broker, s, 30) == 0
    scratch.procs.assert_alive()
    resets = {}
    for p in scratch.stages:
        assert p.readyz()[0], p.readyz()[1]
        resets.update({k.decode(): float(v) for k, v in RESETS.findall(http_get(p.port, "/metrics")[1])})
        assert "THE BROKER HAS LOST ITS STATE" in p.log_tail(200_000), p.stage
    assert all(resets.get(p.stage, 0) >= 1 for p in scratch.stages), resets
    assert all(n == 1 for n in sink.seen.values()), "no result twice"
    print(
        f"\nempty-broker restart: {AFTER_RESTART} new requests each served in {max(served):.2f}s at most "
        f"(bound {SERVE_WITHIN_S}s); of {len(doomed)} requests the broker held, {len(survived)} came out "
        f"(outputs settled into the new broker), {len(doomed) - len(survived)} were lost with it; resets {resets}"
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_full_redis_pushes_back_at_ingress_and_loses_nothing(scratch: Pipeline) -> None:
    s, tag = scratch.settings, f"f{uuid.uuid4().hex[:6]}"
    client = redis_client(scratch.url)
    admitted: list[str] = []
    refusals: list[str] = []
    try:
        async with await connect(settings=s) as broker:
            sink = await Sink(broker, s).open()
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", used + FULL_HEADROOM_BYTES)
            pool = frames(12, seed=61)
            t0 = time.monotonic()
            offered = 0
            while offered < FULL_MAX_OFFERED and len(refusals) < FULL_REFUSALS:
                await asyncio.sleep(max(0.0, t0 + offered / FULL_RATE - time.monotonic()))
                try:
                    admitted += await submit_images(
                        broker, s, [Frame(pool[offered % len(pool)], request_id=f"{tag}-{offered}")], wait_s=0
                    )
                except Backpressure as exc:
                    refusals.append(str(exc))
                offered += 1
                await sink.poll(0.001)
            client.config_set("maxmemory", 0)
            await sink.results_for(set(admitted), timeout_s=150)
            assert await settle_backlogs(broker, s, 30) == 0
            await asyncio.sleep(0.5)
            await sink.poll(0.2)
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    scratch.procs.assert_alive()
    assert refusals, "the full broker never refused ingress"
    assert all("broker is full" in r for r in refusals), refusals[:3]
    assert {rid: sink.seen[rid] for rid in admitted} == dict.fromkeys(admitted, 1), "each admitted request once"
    assert not [d for d in sink.dead if (d.request_id or "").startswith(tag)], "nothing dead-lettered"
    assert not set(sink.seen) & {f"{tag}-{i}" for i in range(offered)} - set(admitted)
    print(
        f"\nredis full: offered {offered}, admitted {len(admitted)}, refused {len(refusals)} with "
        f"Backpressure ({refusals[0][:90]!r}…); {len(admitted)} results, each once, none lost, none dead-lettered"
    )
