"""A message that kills the stage that takes it (SIGKILL, as a decoder segfault or an OOM kill would) is
redelivered, counted across the restarts, and dead-lettered after ``limits.max_retries`` — it does not block
its stream for ever, and the good messages around it each get exactly one output.

The stage is the real decode service; a test-only ``sitecustomize`` on its PYTHONPATH kills it when it takes
a batch holding the marked request (tests/reliability/killer). After every death the test restarts it under
the same consumer name, as an orchestrator would. Redis counts deliveries in its pending list. Kafka keeps no
count, so the stages keep one in an attempts topic; Tansu drops commit metadata, which would otherwise hold it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from tests.broker.conftest import client_url
from tests.reliability.harness import KILL_MARK, Processes, Sink, frames, reliability_overrides, settings_of, stage_env
from tests.servers import Server
from visionpipe.broker import connect
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images

MAX_RETRIES = 2
GOOD_BEFORE, GOOD_AFTER = 6, 6
RESTARTS_TIMEOUT_S = 150.0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["redis", "kafka"])
async def test_a_message_that_kills_its_stage_is_dead_lettered_after_max_retries(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: Server = request.getfixturevalue("durable_redis" if backend == "redis" else "kafka_server")
    ns = f"pk{uuid.uuid4().hex[:8]}"
    overrides = reliability_overrides(
        ns,
        client_url(server.url),
        broker={"reclaim_idle_s": 1.0, "kafka_session_timeout_ms": 3000, "kafka_heartbeat_ms": 300},
        limits={"max_retries": MAX_RETRIES},
        service={"reclaim_interval_s": 0.3},
    )
    s = settings_of(overrides)
    procs = Processes(stage_env(overrides), tmp_path)
    killer = f"{KILL_MARK}-{ns}"
    kills = 0
    try:
        async with await connect(settings=s) as broker:
            await ensure_pipeline_streams(broker, s)
            sink = await Sink(broker, s, stream="tensors").open()
            decode = procs.start("decode", killable=True)
            decode.wait_ready()
            imgs = frames(GOOD_BEFORE + GOOD_AFTER + 1, seed=91)
            good = [Frame(img, request_id=f"{ns}-{i}") for i, img in enumerate(imgs[1:])]
            sent = await submit_images(broker, s, good[:GOOD_BEFORE])
            await submit_images(broker, s, [Frame(imgs[0], request_id=killer)])
            sent += await submit_images(broker, s, good[GOOD_BEFORE:])
            t0 = time.monotonic()
            while time.monotonic() - t0 < RESTARTS_TIMEOUT_S:
                await sink.poll(0.2)
                if any(d.request_id == killer for d in sink.dead) and set(sent) <= sink.seen.keys():
                    break
                if not decode.alive():
                    kills += 1
                    decode.restart()
                    await asyncio.to_thread(decode.wait_ready)
            took = time.monotonic() - t0
            await asyncio.sleep(1.0)
            await sink.poll(0.5)
    finally:
        procs.close()
    (letter,) = [d for d in sink.dead if d.request_id == killer]
    assert f"gave up after {MAX_RETRIES} deliveries" in letter.reason, letter.reason
    assert killer not in sink.seen, "the killer never produced an output"
    if backend == "redis":  # the one-step settle: publish and ack in one script
        assert {rid: sink.seen[rid] for rid in sent} == dict.fromkeys(sent, 1), "every good frame exactly once, raw"
    else:  # without transactions (Tansu cannot recover them) a kill between a publish and its commit repeats it
        assert all(sink.seen.get(rid, 0) >= 1 for rid in sent), "every good frame at least once, none lost"
    duplicated = sum(sink.seen[rid] - 1 for rid in sent)
    # Redis: each delivery of the killer killed the stage. Kafka: the first one could not be told from its batch.
    assert MAX_RETRIES <= kills <= MAX_RETRIES + (backend == "kafka"), kills
    assert not [d for d in sink.dead if d.request_id != killer], "no innocent dead-lettered"
    print(
        f"\npoison that kills ({backend}): {kills} kills, then dead-lettered ({letter.reason!r}) "
        f"after {took:.1f}s; {len(sent)} good frames, none lost, {duplicated} duplicated (raw)"
    )
