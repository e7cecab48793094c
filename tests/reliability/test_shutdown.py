"""Item 5, graceful shutdown: SIGTERM a detector replica while it holds deliveries.

Two replicas join the shared pipeline's detector group: one with a grace
period long enough to finish its in-flight batches, one with a grace far
shorter than a CPU detector batch. Each gets SIGTERM while Redis shows it
holding deliveries. The first must finish and ack everything it held; the
second must exit on time and leave what it did not finish unacked, for the
shared detector to reclaim. Every request still ends with exactly one result:
an ack without a published output would show up as a missing one.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis

from tests.reliability.conftest import Pipeline
from tests.reliability.harness import Sink, StageProc, frames, pending_by_consumer, redis_client, settle_backlogs
from visionpipe import topology
from visionpipe.broker import connect
from visionpipe.ingress import Frame, submit_images
from visionpipe.topology import DETECTOR

LONG_GRACE_S = 20.0
# A CPU detector batch takes hundreds of milliseconds: 10 ms of grace cannot finish one.
SHORT_GRACE_S = 0.01
# Shutdown after the grace: cancel, stop the executor, close the broker and the health server.
EXIT_SLACK_S = 5.0
REQUESTS = 16
# Frames go in waves until both replicas were caught holding work; this bounds the waves.
MAX_WAVES = 4
WAVE_S = 15.0


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigterm_finishes_in_flight_and_acks_nothing_unfinished(pipeline: Pipeline, tag: str) -> None:
    s = pipeline.settings
    stream = topology.input_stream(DETECTOR, s)
    client = redis_client(pipeline.url)
    graces = {"long": LONG_GRACE_S, "short": SHORT_GRACE_S}
    replicas = {
        name: pipeline.procs.start(DETECTOR, env={"VISIONPIPE_SERVICE__DRAIN_GRACE_S": str(g)})
        for name, g in graces.items()
    }
    for r in replicas.values():
        r.wait_ready()
    held_at_term: dict[str, int] = {}
    stopping: dict[str, asyncio.Task[tuple[float, int]]] = {}
    sent: list[str] = []
    try:
        async with await connect(settings=s) as broker:
            sink = await Sink(broker, s).open()
            for wave in range(MAX_WAVES):
                imgs = frames(REQUESTS, seed=21 + wave)
                batch = [Frame(im, request_id=f"{tag}-{wave}-{i}") for i, im in enumerate(imgs)]
                sent += await submit_images(broker, s, batch)
                deadline = time.monotonic() + WAVE_S
                while len(stopping) < len(replicas) and time.monotonic() < deadline:
                    for name, r in replicas.items():
                        held = pending_by_consumer(client, stream, DETECTOR).get(r.member, 0)
                        if name in stopping or not held:
                            continue
                        held_at_term[name] = held
                        # Both may be draining at once: each is timed in its own thread.
                        stopping[name] = asyncio.create_task(
                            asyncio.to_thread(_term_and_time, r, graces[name], client, stream)
                        )
                    await asyncio.sleep(0.02)
                if len(stopping) == len(replicas):
                    break
            outcome = {name: await task for name, task in stopping.items()}
            exit_s = {name: round(t, 2) for name, (t, _) in outcome.items()}
            left = {name: n for name, (_, n) in outcome.items()}
            assert set(exit_s) == set(replicas), f"replicas never caught holding work: {set(replicas) - set(exit_s)}"
            await sink.results_for(set(sent), timeout_s=150)
            assert await settle_backlogs(broker, s, 30) == 0
    finally:
        client.close()
        for r in replicas.values():
            r.stop()
    pipeline.procs.assert_alive()
    assert exit_s["long"] < LONG_GRACE_S, "finished its batches within the grace period"
    assert left["long"] == 0, "a generous grace finishes and acks everything in flight"
    assert exit_s["short"] < SHORT_GRACE_S + EXIT_SLACK_S, "exits once the grace period is over"
    assert left["short"] > 0, "unfinished deliveries stay unacked for another replica"
    print(
        f"\nshutdown: held at SIGTERM {held_at_term}, exit after {exit_s} s, left unacked {left}; "
        f"{len(sent)} requests -> {len(sent)} results ({sink.duplicates} duplicates removed at the sink)"
    )


def _term_and_time(r: StageProc, grace_s: float, client: redis.Redis, stream: str) -> tuple[float, int]:
    """SIGTERM, wait for the exit (code 0); how long it took and how many deliveries it left unacked."""
    t0 = time.monotonic()
    r.signal(signal.SIGTERM)
    rc = r.wait(grace_s + EXIT_SLACK_S + 10)
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc} after SIGTERM:\n{r.log_tail()}"
    return took, pending_by_consumer(client, stream, DETECTOR).get(r.member, 0)
