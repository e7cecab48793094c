"""Item 3, overload: offer three times the pipeline's measured capacity for 60 s, then let it drain.

Open-loop: one frame per tick at 3x capacity, each admitted or refused *at once* by the ingress
(``wait_s=0``), so every refusal is a :class:`Backpressure` error the producer sees and counts, never
a silent drop. Throughout, psutil samples the RSS of every stage process and of redis-server, and a
never-reading *audit* group on the frames stream pins its entries (the ack script may only trim what
every group is done with), so the stream's length must equal what was admitted: nothing trimmed.
Afterwards every admitted request must have exactly one result at the de-duplicating sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import psutil
import pytest

from tests.reliability.conftest import Pipeline
from tests.reliability.harness import Sink, frames, redis_client, settle_backlogs
from visionpipe import topology
from visionpipe.broker import Broker, connect
from visionpipe.ingress import Backpressure, Frame, submit_images
from visionpipe.settings import Settings
from visionpipe.topology import STAGES

OVERLOAD_FACTOR = 3.0
# Calibration on a short burst misjudges the steady state on a loaded box (measured: 1.4-1.9x below what the
# pipeline then sustained), so the schedule aims well above the target; the assertion checks the rate offered.
OFFER_MARGIN = 2.5
OVERLOAD_S = 60.0
CALIBRATION_REQUESTS = 16
# The watermark is a few seconds of work at capacity: enough to keep every stage busy, little to drain.
WATERMARK_SECONDS_OF_WORK = 5.0
MIN_WATERMARK = 12
# ...and at most this many: results that leave the classifier in bursts can make a short calibration read
# far too fast (measured once: a watermark near 5,000, then a drain longer than DRAIN_TIMEOUT_S).
MAX_WATERMARK = 120
SAMPLE_S = 0.5
# RSS may grow while the executors and allocators settle early on; after that it must flatten: the last
# half's peak stays within this of the first half's (a leak or an unbounded queue grows without end).
RSS_GROWTH_FACTOR = 1.3
RSS_GROWTH_SLACK_MB = 150
DRAIN_TIMEOUT_S = 180
# A message a stage has published onward but not yet acked counts in two streams: at most the in-flight
# batches of every stage (2 x batch 4 x 3 stages) above the watermark.
BACKLOG_OVERSHOOT = 24
AUDIT_GROUP = "overload-audit"


@dataclass
class Samples:
    rss_mb: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    backlog: list[int] = field(default_factory=list)
    length_mismatch: list[tuple[int, int]] = field(default_factory=list)

    def peak(self, name: str, since: float = 0.0, until: float = float("inf")) -> float:
        return max((mb for t, mb in self.rss_mb.get(name, []) if since <= t < until), default=0.0)


def _rss_mb(proc: psutil.Process) -> float:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


async def _calibrate(broker: Broker, s: Settings, sink: Sink, tag: str) -> float:
    """Requests per second the pipeline finishes when it has work queued (steady state, not fill time)."""
    batch = [Frame(img, request_id=f"{tag}-cal-{i}") for i, img in enumerate(frames(CALIBRATION_REQUESTS, seed=41))]
    ids = set(await submit_images(broker, s, batch))
    done_at: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(done_at) < len(ids) and time.monotonic() < deadline:
        await sink.poll(0.05)
        now = time.monotonic()
        for rid in ids & sink.results.keys():
            done_at.setdefault(rid, now)
    assert len(done_at) == len(ids), "calibration requests did not finish"
    times = sorted(done_at.values())
    half = len(times) // 2  # skip the fill: the first results wait for the whole pipeline to warm
    return (len(times) - 1 - half) / max(times[-1] - times[half], 1e-3)


@pytest.mark.slow
@pytest.mark.timeout(600)  # 60 s of overload, its drain (DRAIN_TIMEOUT_S) and calibration, on a loaded box
async def test_three_times_capacity_for_a_minute_then_drain(pipeline: Pipeline, tag: str) -> None:
    client = redis_client(pipeline.url)
    frames_stream = pipeline.settings.streams.name("frames")
    procs = {p.stage: psutil.Process(p.proc.pid) for p in pipeline.stages if p.proc is not None}
    redis_proc = psutil.Process(pipeline.server.proc.pid) if pipeline.server.proc else None
    samples = Samples()
    async with await connect(settings=pipeline.settings) as broker:
        sink = await Sink(broker, pipeline.settings).open()
        capacity = await _calibrate(broker, pipeline.settings, sink, tag)
        watermark = min(MAX_WATERMARK, max(MIN_WATERMARK, round(capacity * WATERMARK_SECONDS_OF_WORK)))
        s = pipeline.settings.model_copy(deep=True)
        s.limits.ingress_high_watermark = watermark
        rate = OFFER_MARGIN * OVERLOAD_FACTOR * capacity
        pool = frames(20, seed=42)

        await broker.ensure(frames_stream, AUDIT_GROUP)  # pins every frame from here on: nothing may be trimmed
        base_len = client.xlen(frames_stream)
        admitted: list[str] = []
        refused = 0
        t0 = time.monotonic()

        async def sample() -> None:
            while True:
                t = time.monotonic() - t0
                for name, proc in [*procs.items(), ("redis-server", redis_proc)]:
                    if proc is not None:
                        samples.rss_mb.setdefault(name, []).append((t, _rss_mb(proc)))
                total = 0
                for stage in STAGES:
                    total += (await broker.backlog(topology.input_stream(stage, s), stage)).total
                samples.backlog.append(total)
                n = len(admitted)
                length = client.xlen(frames_stream)
                if not 0 <= length - (base_len + n) <= 1:  # one publish may be in flight while this runs
                    samples.length_mismatch.append((length, base_len + n))
                await sink.poll(0.01)
                await asyncio.sleep(SAMPLE_S)

        sampler = asyncio.create_task(sample())
        try:
            for i in range(int(OVERLOAD_S * rate)):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                try:
                    admitted += await submit_images(
                        broker, s, [Frame(pool[i % len(pool)], request_id=f"{tag}-o-{i}")], wait_s=0
                    )
                except Backpressure:
                    refused += 1
            offered_s = time.monotonic() - t0
            t_drain = time.monotonic()
            await sink.results_for(set(admitted), timeout_s=DRAIN_TIMEOUT_S)
            drain_s = time.monotonic() - t_drain
            assert await settle_backlogs(broker, s, 30) == 0
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            final_len = client.xlen(frames_stream)
            client.xgroup_destroy(frames_stream, AUDIT_GROUP)
            client.close()

    pipeline.procs.assert_alive()
    offered = len(admitted) + refused
    # Saturated, the pipeline admits what it finishes: this is its real capacity, whatever calibration said.
    sustained = len(admitted) / offered_s
    offered_rate = offered / offered_s
    assert offered_rate >= OVERLOAD_FACTOR * sustained, (
        f"offered {offered_rate:.1f}/s is not {OVERLOAD_FACTOR}x of {sustained:.1f}/s"
    )
    assert refused > 0, "3x capacity must hit the high watermark and be refused with Backpressure"
    assert final_len == base_len + len(admitted), "the frames stream holds every admitted request: none trimmed"
    assert not samples.length_mismatch, samples.length_mismatch[:5]
    assert max(samples.backlog) <= watermark + BACKLOG_OVERSHOOT, "the backlog stays at the watermark"
    assert not [d for d in sink.dead if (d.request_id or "").startswith(tag)], "nothing dead-lettered"
    half = OVERLOAD_S / 2
    for name in procs:
        early, late = samples.peak(name, 0, half), samples.peak(name, half, offered_s)
        assert late <= max(early * RSS_GROWTH_FACTOR, early + RSS_GROWTH_SLACK_MB), (name, early, late)
    peaks = {name: round(samples.peak(name)) for name in samples.rss_mb}
    print(
        f"\noverload: calibrated capacity {capacity:.1f} req/s, sustained {sustained:.1f} req/s, "
        f"offered {offered} at {rate:.1f} req/s for {offered_s:.0f}s, "
        f"admitted {len(admitted)}, refused with Backpressure {refused} (watermark {watermark}), "
        f"max pipeline backlog {max(samples.backlog)}; {len(admitted)} results after removing "
        f"{sum(sink.seen[r] for r in admitted) - len(admitted)} duplicates, drained in {drain_s:.1f}s; "
        f"peak RSS MB {peaks}"
    )
