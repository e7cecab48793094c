"""Item 1 on the Kafka-protocol broker: a decode member SIGKILLed mid-run; the group rebalances its
partitions to the survivor, which reads on from the committed offsets. Kafka has no per-message
pending list to inspect, so the victim is killed once its metrics show it finishing work while
frames are still queued; the check is the same as on Redis: one output per request after
de-duplication, none lost.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.reliability.harness import (
    STANDIN_ENV,
    Processes,
    Sink,
    StageProc,
    frames,
    http_get,
    reliability_overrides,
    settings_of,
    stage_env,
)
from tests.servers import Server
from visionpipe.broker import connect
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images

REQUESTS = 120
# Tansu reports end offsets exactly only with one record per batch (see tests/broker/conftest.py).
TANSU_EXACT_OFFSETS = "producer.batch.num.messages=1"
# A dead member is noticed after the session timeout; short, so the rebalance is quick.
SESSION_TIMEOUT_MS = 3000
OK_COUNT = re.compile(rb'visionpipe_messages_total\{outcome="ok",stage="decode"\} (\S+)')


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kafka_member_killed_mid_run_its_partitions_move_to_the_survivor(
    kafka_server: Server, tmp_path: Path, tag: str
) -> None:
    overrides = reliability_overrides(
        f"kr{uuid.uuid4().hex[:8]}",
        f"{kafka_server.url}?{TANSU_EXACT_OFFSETS}",
        broker={"kafka_session_timeout_ms": SESSION_TIMEOUT_MS, "kafka_heartbeat_ms": 300},
    )
    s = settings_of(overrides)
    procs = Processes(stage_env(overrides), tmp_path)
    try:
        async with await connect(settings=s) as broker:
            await ensure_pipeline_streams(broker, s)
            sink = await Sink(broker, s, stream="tensors").open()
            victim, survivor = procs.start("decode"), procs.start("decode")
            victim.wait_ready()
            survivor.wait_ready()
            imgs = frames(REQUESTS, seed=71)
            sent = await submit_images(broker, s, [Frame(im, request_id=f"{tag}-{i}") for i, im in enumerate(imgs)])
            deadline = time.monotonic() + 60
            done = 0.0
            while time.monotonic() < deadline:
                m = OK_COUNT.search(http_get(victim.port, "/metrics")[1])
                done = float(m.group(1)) if m else 0.0
                if done > 0:
                    break
                await asyncio.sleep(0.02)
            assert done > 0, f"the victim never worked:\n{victim.log_tail()}"
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            t_kill = time.monotonic()
            await sink.results_for(set(sent), timeout_s=120)
            took = time.monotonic() - t_kill
        assert survivor.alive()
    finally:
        procs.close()
    print(
        f"\nkafka member killed: {len(sent)} requests, victim had finished {done:.0f}; lost 0, duplicated "
        f"{sink.duplicates} (raw outputs: published by the victim, not yet committed), {took:.1f}s after the kill"
    )


SCALE_REQUESTS = 240
# After the joiners are up, frames keep coming at this rate until one of them has settled work (or the deadline):
# a rebalance on Tansu can take longer than the first member needs for the initial burst, and a joiner assigned
# an empty partition proves nothing. New frames land on every partition, so an assigned joiner is soon busy.
TRICKLE_RATE, TRICKLE_BATCH, JOINERS_WORK_WITHIN_S = 20.0, 5, 60.0


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kafka_scale_from_one_member_to_three_moves_partitions_without_loss(
    kafka_server: Server, tmp_path: Path, tag: str
) -> None:
    """Cooperative-sticky: joining members take partitions from the first one incrementally; it keeps the rest
    and its uncommitted work there. Outputs are counted raw (no de-duplication) to show what a rebalance costs.
    Stand-in stage bodies (tests/reliability/inject) keep three start-ups cheap; the worker is the real one."""
    overrides = reliability_overrides(
        f"ks{uuid.uuid4().hex[:8]}",
        f"{kafka_server.url}?{TANSU_EXACT_OFFSETS}",
        broker={"kafka_session_timeout_ms": SESSION_TIMEOUT_MS, "kafka_heartbeat_ms": 300},
    )
    s = settings_of(overrides)
    procs = Processes({**stage_env(overrides), **STANDIN_ENV}, tmp_path)
    try:
        async with await connect(settings=s) as broker:
            await ensure_pipeline_streams(broker, s)
            sink = await Sink(broker, s, stream="tensors").open()
            first = procs.start("decode")
            first.wait_ready()
            imgs = frames(20, seed=73)
            batch = [Frame(imgs[i % 20], request_id=f"{tag}-{i}") for i in range(SCALE_REQUESTS)]
            sent = await submit_images(broker, s, batch)
            while not _ok_count(first):
                await sink.poll(0.05)
            joined = [procs.start("decode"), procs.start("decode")]
            for p in joined:
                p.wait_ready()
            t_scale = time.monotonic()
            while time.monotonic() - t_scale < JOINERS_WORK_WITHIN_S and not any(_ok_count(p) for p in joined):
                more = [
                    Frame(imgs[(len(sent) + i) % 20], request_id=f"{tag}-{len(sent) + i}") for i in range(TRICKLE_BATCH)
                ]
                sent += await submit_images(broker, s, more)
                await sink.poll(TRICKLE_BATCH / TRICKLE_RATE)
            joiners_at = time.monotonic() - t_scale
            await sink.results_for(set(sent), timeout_s=150)
            took = time.monotonic() - t_scale
            await asyncio.sleep(1.0)
            await sink.poll(0.5)
        work = {p.consumer: _ok_count(p) for p in [first, *joined]}
        procs.assert_alive()
    finally:
        procs.close()
    duplicated = {rid: n for rid, n in sink.seen.items() if n > 1}
    assert all(sink.seen[rid] >= 1 for rid in sent), "none lost"
    assert sum(1 for n in work.values() if n > 0) >= 2, f"the new members never got partitions: {work}"
    print(
        f"\nkafka scale 1 -> 3: {len(sent)} requests, lost 0, duplicated {len(duplicated)} (raw outputs); "
        f"work per member {work}; a joiner settled work {joiners_at:.1f}s after the scale, all out {took:.1f}s after"
    )


def _ok_count(p: StageProc) -> float:
    m = OK_COUNT.search(http_get(p.port, "/metrics")[1])
    return float(m.group(1)) if m else 0.0
