"""A stalled group member is noticed and rejoins: the clock's rules, then a Kafka member stranded for real.

On Apache Kafka (the single-node session broker), a worker's consumer is left counted in its group as the owner
of every partition while it reads none of them, as after a coordinator move whose rejoin never finished: the
group's lag then grows and nothing errors. The worker must notice from outside (lag that does not go down while
it gets nothing) and join again, after which its partitions are read and every request comes through.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.kafka.apache import KafkaCluster
from tests.services.runtime.helpers import EchoStage
from visionpipe.broker import Broker, connect
from visionpipe.envelope import Envelope
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.stall import Stall
from visionpipe.services.runtime.worker import Worker
from visionpipe.settings import load_settings
from visionpipe.topology import DECODE

STALL_S = 3.0


def test_lag_that_does_not_go_down_while_idle_is_a_stall_after_the_wait() -> None:
    stall = Stall(after_s=10.0)
    assert not stall.observe(5, idle=True, now=0.0)
    assert not stall.observe(7, idle=True, now=9.0)  # rising lag, still idle: the clock runs
    assert stall.observe(7, idle=True, now=10.0) and stall.due
    assert not stall.observe(7, idle=True, now=11.0) or stall.due  # due until the worker rejoins


@pytest.mark.parametrize(
    "interruption",
    ["lag went down", "no lag", "busy", "worked"],
)
def test_progress_anywhere_restarts_the_clock(interruption: str) -> None:
    stall = Stall(after_s=10.0)
    stall.observe(5, idle=True, now=0.0)
    if interruption == "worked":
        stall.worked()
        stall.observe(5, idle=True, now=5.0)
    else:
        lag, idle = {"lag went down": (4, True), "no lag": (0, True), "busy": (5, False)}[interruption]
        stall.observe(lag, idle=idle, now=5.0)
        stall.observe(5, idle=True, now=6.0)
    assert not stall.observe(5, idle=True, now=12.0)
    assert stall.observe(5, idle=True, now=16.5)


async def _echoed(broker: Broker, stream: str, want: set[str], timeout_s: float) -> set[str]:
    """Request ids of the outputs read from ``stream`` until all of ``want`` are in, or the time is up."""
    got: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not want <= got and time.monotonic() < deadline:
        for d in await broker.consume(stream, "reader", "r", 100, 0.2):
            got.add(Envelope.decode(d.data).request_id)
            await broker.ack(stream, "reader", [d])
    return got


@pytest.mark.timeout(180)
async def test_a_kafka_member_stranded_with_no_partitions_rejoins_and_its_backlog_is_read(
    apache_kafka: KafkaCluster, ns: str
) -> None:
    settings = load_settings(
        broker={"url": apache_kafka.url, "reclaim_idle_s": 60.0},
        streams={"prefix": ns},
        service={"consume_timeout_s": 0.05, "drain_grace_s": 5.0, "reclaim_interval_s": 1.0},
    )
    async with await connect(settings=settings) as broker:
        await ensure_pipeline_streams(broker, settings)
        tensors = settings.streams.name("tensors")
        await broker.ensure(tensors, "reader")
        metrics = Metrics()
        worker = Worker(EchoStage(), broker, settings, metrics, per_consume=4)
        worker.stall.after_s = STALL_S
        running = asyncio.create_task(worker.run())
        try:
            first = set(await submit_images(broker, settings, [Frame(b"a%d" % i) for i in range(4)]))
            assert first <= await _echoed(broker, tensors, first, 60), "the worker never worked"
            member = broker._members[(worker.ctx.input, worker.ctx.group, worker.ctx.consumer)]  # type: ignore[attr-defined]
            # Still the group's owner of every partition, reading none: what a member stuck after a coordinator
            # move looks like from outside.
            await asyncio.to_thread(lambda: member.consumer.incremental_unassign(member.consumer.assignment()))
            t_strand = time.monotonic()
            later = set(await submit_images(broker, settings, [Frame(b"b%d" % i) for i in range(4)]))
            got = await _echoed(broker, tensors, later, 60)
            took = time.monotonic() - t_strand
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
    stalls = metrics.errors.labels(DECODE, "stalled")._value.get()
    assert later <= got, f"{len(later - got)} of {len(later)} requests never came through the stranded member"
    assert stalls >= 1, "came through without a rejoin: the member was not stranded"
    assert took >= STALL_S, took
