"""Item 1, worker killed: SIGKILL a replica of every stage while it holds unacked deliveries.

The shared pipeline runs one process per stage; this test adds a second
replica of each to the same consumer groups, feeds frames, and kills each
added replica at a moment Redis shows it holding deliveries (mid-batch).
The survivors must take those deliveries over with ``XAUTOCLAIM`` once they
have been idle ``broker.reclaim_idle_s``, and the sink must read exactly one
result per request, counted raw: none lost, none doubled (the settle that
publishes and acks is one step, once per request and stage).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
import redis

from tests.reliability.conftest import Pipeline
from tests.reliability.harness import (
    RECLAIM_IDLE_S,
    Sink,
    StageProc,
    frames,
    pending_by_consumer,
    redis_client,
    settle_backlogs,
)
from visionpipe import topology
from visionpipe.broker import connect
from visionpipe.ingress import Frame, submit_images
from visionpipe.topology import STAGES

REQUESTS = 36
# Frames are sent in waves until every victim was caught holding work; this bounds the waves.
MAX_WAVES = 4
WAVE_S = 20.0
KILL_POLL_S = 0.02


def _held(client: redis.Redis, stream: str, stage: str, victim: StageProc) -> list[str]:
    """Entry ids ``victim`` holds unacked right now."""
    rows: Any = client.xpending_range(stream, stage, "-", "+", 100, victim.member)
    return [r["message_id"].decode() for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_mid_batch_in_every_stage_loses_nothing(pipeline: Pipeline, tag: str) -> None:
    s = pipeline.settings
    client = redis_client(pipeline.url)
    victims = {stage: pipeline.procs.start(stage) for stage in STAGES}
    for v in victims.values():
        v.wait_ready()
    killed: dict[str, list[str]] = {}
    sent: list[str] = []
    try:
        async with await connect(settings=s) as broker:
            sink = await Sink(broker, s).open()
            for wave in range(MAX_WAVES):
                imgs = frames(REQUESTS // 2 if wave else REQUESTS, seed=wave + 11)
                batch = [Frame(img, request_id=f"{tag}-{wave}-{i}") for i, img in enumerate(imgs)]
                sent += await submit_images(broker, s, batch, wait_s=5.0)
                deadline = time.monotonic() + WAVE_S
                while len(killed) < len(victims) and time.monotonic() < deadline:
                    for stage, victim in victims.items():
                        stream = topology.input_stream(stage, s)
                        if stage in killed or not pending_by_consumer(client, stream, stage).get(victim.member):
                            continue
                        held = _held(client, stream, stage, victim)
                        if not held:  # acked since the summary: not mid-batch any more
                            continue
                        victim.signal(signal.SIGKILL)
                        victim.wait(10)
                        killed[stage] = held
                    await asyncio.sleep(KILL_POLL_S)
                if len(killed) == len(victims):
                    break
            assert set(killed) == set(STAGES), f"victims never caught mid-batch: {set(STAGES) - set(killed)}"
            t_kill = time.monotonic()
            await sink.results_for(set(sent), timeout_s=150)
            t_done = time.monotonic()
            assert await settle_backlogs(broker, s, 30) == 0
            for stage, victim in victims.items():
                stream = topology.input_stream(stage, s)
                assert not pending_by_consumer(client, stream, stage).get(victim.member), "left with the dead member"
    finally:
        client.close()
        for v in victims.values():
            v.stop()
    pipeline.procs.assert_alive()
    extra = sum(sink.seen[rid] for rid in sent) - len(sent)
    assert all(sink.seen[rid] == 1 for rid in sent), f"{extra} results twice"
    print(
        f"\nworker killed (real models): {len(sent)} requests, held by the killed replicas "
        f"{ {k: len(v) for k, v in killed.items()} }; lost 0, duplicated {extra} (raw), "
        f"all in {t_done - t_kill:.1f}s after the kills (reclaim idle {RECLAIM_IDLE_S}s)"
    )
