"""kill -9 of every stage, twenty times each, at random points: the results stream then holds every request
exactly once, counted raw (no de-duplication anywhere after the pipeline), and every bad input once in the
dead-letter stream with its reason.

Two replicas of each stage share its group. A victim is chosen in turn per stage, caught (where it can be)
holding deliveries, and killed a random 0-300 ms later: mid-decode, mid-batch, inside a settle. An
orchestrator's restart follows at once, under the same consumer name. A never-reading audit group pins the
results and dead-letter streams, so what they hold at the end is all they ever held.

The processes are real ``visionpipe serve`` workers (worker, middleware, settle scripts, heartbeats) with the
real CPU decode, but stand-in detector and classifier bodies (tests/reliability/inject): sixty restarts of
torch stages take many minutes on two shared cores. test_worker_killed.py kills the real models.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.reliability.harness import (
    STANDIN_ENV,
    Processes,
    Sink,
    dead_counts,
    frames,
    pending_by_consumer,
    pin,
    raw_counts,
    redis_client,
    reliability_overrides,
    settings_of,
    settle_backlogs,
    stage_env,
)
from tests.reliability.poison import REASONS, poison_inputs
from tests.servers import Server
from visionpipe import topology
from visionpipe.broker import connect
from visionpipe.ingress import Frame, submit_images
from visionpipe.topology import STAGES

KILLS_PER_STAGE = 20
# Heartbeats keep live work ours, so a dead replica's deliveries can be taken over quickly.
RECLAIM_IDLE_S = 2.0
# A victim caught holding work is killed this long after, at random: any point of its loop.
KILL_JITTER_S = 0.3
CATCH_TIMEOUT_S = 3.0
FRAMES_PER_TICK, TICK_S = 2, 0.4
BAD_KINDS = ("empty", "truncated", "not-an-image", "bomb", "no-image-field", "unknown-version", "bad-array")


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_kill9_of_each_stage_twenty_times_leaves_each_result_exactly_once(
    durable_redis: Server, tmp_path: Path
) -> None:
    ns = f"eo{uuid.uuid4().hex[:8]}"
    overrides = reliability_overrides(
        ns, durable_redis.url, broker={"reclaim_idle_s": RECLAIM_IDLE_S}, service={"reclaim_interval_s": 0.5}
    )
    s = settings_of(overrides)
    client = redis_client(durable_redis.url)
    results, dead = s.streams.name("results"), s.streams.name("dead_letter")
    for stream in (results, dead):
        pin(client, stream)
    procs = Processes({**stage_env(overrides), **STANDIN_ENV}, tmp_path)
    rng = random.Random(14)
    sent: list[str] = []
    bad = [p for p in poison_inputs(ns) if p.kind in BAD_KINDS and p.request_id][::2]
    kills = dict.fromkeys(STAGES, 0)
    caught = dict.fromkeys(STAGES, 0)
    try:
        replicas = {stage: [procs.start(stage), procs.start(stage)] for stage in STAGES}
        for pair in replicas.values():
            for p in pair:
                p.wait_ready()
        async with await connect(settings=s) as broker:
            sink = await Sink(broker, s).open()
            for p in bad:
                await broker.publish(s.streams.name(p.stream), [p.data], [p.request_id])

            async def feed() -> None:
                i = 0
                while True:
                    imgs = frames(FRAMES_PER_TICK, seed=1000 + i)
                    batch = [Frame(img, request_id=f"{ns}-{i}-{j}") for j, img in enumerate(imgs)]
                    sent.extend(await submit_images(broker, s, batch, wait_s=30))
                    i += 1
                    await asyncio.sleep(TICK_S)

            feeder = asyncio.create_task(feed())
            t0 = time.monotonic()
            try:
                for round_ in range(KILLS_PER_STAGE):
                    for stage in STAGES:
                        victim = replicas[stage][round_ % 2]
                        stream = topology.input_stream(stage, s)
                        deadline = time.monotonic() + CATCH_TIMEOUT_S
                        while time.monotonic() < deadline and not pending_by_consumer(client, stream, stage).get(
                            victim.member
                        ):
                            await asyncio.sleep(0.02)
                        caught[stage] += bool(pending_by_consumer(client, stream, stage).get(victim.member))
                        await asyncio.sleep(rng.uniform(0, KILL_JITTER_S))
                        victim.signal(signal.SIGKILL)
                        victim.wait(10)
                        kills[stage] += 1
                        victim.restart()
                    await sink.poll(0.01)
            finally:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            killing_s = time.monotonic() - t0
            t_drain = time.monotonic()
            await sink.results_for(set(sent), timeout_s=240)
            drain_s = time.monotonic() - t_drain
            want_dead = {p.request_id for p in bad}
            await sink.until(
                lambda: want_dead <= {d.request_id for d in sink.dead}, 60, lambda: "bad inputs not dead-lettered"
            )
            assert await settle_backlogs(broker, s, 60) == 0
            counts, letters = raw_counts(client, results), dead_counts(client, dead)
    finally:
        for stream in (results, dead):
            client.xgroup_destroy(stream, "reliability-audit")
        client.close()
        procs.close()
    duplicated = {rid: n for rid, n in counts.items() if n > 1}
    lost = [rid for rid in sent if counts[rid] == 0]
    assert not lost and not duplicated, (len(lost), duplicated)
    assert not set(counts) - set(sent), "nothing in the results that was not sent"
    assert not [rid for rid in sent if rid in letters], "no good request was dead-lettered"
    for p in bad:
        assert p.request_id is not None
        reasons = letters.get(p.request_id, [])
        assert len(reasons) == 1, (p.kind, reasons)
        assert any(w in reasons[0] for w in REASONS[p.kind]), (p.kind, reasons[0])
    print(
        f"\nexactly once under kill -9: {sum(kills.values())} kills ({kills}, caught holding work {caught}) over "
        f"{killing_s:.0f}s, {len(sent)} requests: lost 0, duplicated 0 in the raw results stream; "
        f"{len(bad)} bad inputs each dead-lettered once with its reason; drained {drain_s:.1f}s after the last kill"
    )
