"""A load run over real brokers against stand-in stages in this process: matching, losses, open loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.loadgen.passthrough import POISON, run_stage
from visionpipe.loadgen.payloads import ImageSet, synthetic
from visionpipe.loadgen.runner import RunOptions, delete_streams, run_load
from visionpipe.loadgen.schedule import LoadSpec
from visionpipe.settings import Settings, load_settings
from visionpipe.topology import STAGES

SMALL = synthetic(48, 32, count=3)
QUIET = RunOptions(progress=False, drain_timeout_s=10, warmup_requests=2, warmup_timeout_s=20)


@pytest.fixture(params=["redis", "kafka"])
def server_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_server").url)


def settings_for(url: str, ns: str, **limits: int) -> Settings:
    return load_settings(broker={"url": url}, streams={"prefix": ns}, limits=limits or None)


@asynccontextmanager
async def pipeline(settings: Settings, stall: Callable[[str], float] | None = None) -> AsyncIterator[None]:
    """The three stand-in stages as tasks; streams deleted afterwards."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_stage(s, settings, stop, stall=stall)) for s in STAGES]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await delete_streams(settings)


async def test_open_loop_run_matches_every_result(server_url: str, ns: str) -> None:
    settings = settings_for(server_url, ns)
    async with pipeline(settings):
        result = await run_load(settings, LoadSpec("poisson", rate=40, duration_s=1.5, seed=1), SMALL, QUIET)
    s = result.summary
    assert s["sent"] > 30
    assert (s["completed"], s["lost"], s["duplicates"], s["failed"]) == (s["sent"], 0, 0, 0)
    assert s["latency_ms"]["p50"] > 0
    assert s["latency_ms"]["count"] == s["sent"]
    assert {"hop → decode", "detector compute", "classifier compute", "hop → sink"} <= set(s["segments_ms"])
    assert 0 < s["non_dnn_share"] < 1
    assert s["warmup"]["latency_ms"]["count"] == 2  # warm-up answered and kept out of the measurement


async def test_dead_lettered_requests_count_as_failed_not_lost(redis_server, ns: str) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(redis_server.url, ns)
    images = ImageSet((SMALL.images[0], POISON), "good and poison")  # every second request is refused by decode
    async with pipeline(settings):
        result = await run_load(
            settings,
            LoadSpec("constant", rate=40, duration_s=0.5),
            images,
            RunOptions(progress=False, drain_timeout_s=10, warmup_requests=0),
        )
    s = result.summary
    assert s["sent"] == 20
    assert (s["failed"], s["completed"], s["lost"]) == (10, 10, 0)
    assert s["failure_reasons"] == {"decode: not an image": 10}


async def test_open_loop_charges_a_stall_to_every_request_scheduled_during_it(redis_server, ns: str) -> None:  # type: ignore[no-untyped-def]
    """Coordinated omission: while a stage hangs, ingress backpressure holds the sender back; the requests
    due meanwhile must show the hang in their latency (from scheduled time), not hide it (from actual send)."""
    settings = settings_for(redis_server.url, ns, ingress_high_watermark=5)
    stall_s, rate = 0.8, 50
    spec = LoadSpec("constant", rate=rate, duration_s=2.0)
    opts = RunOptions(progress=False, drain_timeout_s=10, warmup_requests=0)
    async with pipeline(settings, stall=stall_first(stall_s)):
        result = await run_load(settings, spec, SMALL, opts)
    s = result.summary
    assert s["lost"] == 0 and s["completed"] == s["sent"] == 100
    delayed = [lat for _, lat in s["timeline"] if lat > stall_s * 1000 / 2]
    # Requests due in the first half of the stall waited at least half of it: about rate × stall / 2 of them.
    assert len(delayed) >= rate * stall_s / 2 * 0.8
    assert s["latency_ms"]["max"] >= stall_s * 1000 * 0.9
    # The sender was held at ingress: the wait shows as ingress wait, before the frames were stamped.
    assert s["segments_ms"]["ingress wait"]["max"] >= stall_s * 1000 / 2


def stall_first(seconds: float) -> Callable[[str], float]:
    """Hang on the first request any stage sees, once (the run id is random, so match by order)."""
    left = [seconds]

    def stall(_request_id: str) -> float:
        return left.pop() if left else 0.0

    return stall


async def test_closed_loop_keeps_its_concurrency_and_loses_nothing(redis_server, ns: str) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(redis_server.url, ns)
    async with pipeline(settings):
        result = await run_load(settings, LoadSpec("closed", duration_s=1.5, concurrency=2), SMALL, QUIET)
    s = result.summary
    assert s["sent"] >= 10
    assert (s["completed"], s["lost"], s["duplicates"]) == (s["sent"], 0, 0)
    # Two in flight and ≥ 6 ms of stage time each: a closed loop cannot exceed 2 / 6 ms.
    assert s["throughput_rps"] < 2 / 0.006


async def test_backpressure_beyond_the_wait_is_a_rejection_not_a_silent_drop(redis_server, ns: str) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(redis_server.url, ns, ingress_high_watermark=3)
    # No stages: the frames backlog reaches the watermark after 3 requests and stays there.
    opts = RunOptions(progress=False, drain_timeout_s=0.3, warmup_requests=0, backpressure_wait_s=0.1)
    try:
        result = await run_load(settings, LoadSpec("constant", rate=20, duration_s=0.5), SMALL, opts)
    finally:
        await delete_streams(settings)
    s = result.summary
    assert s["sent"] == 10
    assert s["failed"] == 7 and s["lost"] == 3
    assert all(reason.startswith("backpressure") for reason in s["failure_reasons"])
