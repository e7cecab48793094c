"""``visionpipe broker-demo``: messages through one relay stage, the way every stage uses the broker.

A quick check that a broker URL works end to end (credentials, TLS, groups)
and what two hops cost: the relay consumes from ``in``, publishes to ``out``
and only then acks its input, the at-least-once order every stage follows.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid

import click
from hdrh.histogram import HdrHistogram

from visionpipe.broker import Broker, connect, wire
from visionpipe.broker.security import redact_url
from visionpipe.loadgen.bench.broker_hop import HIST_MAX_US, WARMUP_S, warm_up
from visionpipe.settings import load_settings

STAMPS = struct.Struct("<qq")  # (sent, relayed) in perf_counter_ns; one process, one clock


async def relay_demo(broker: Broker, count: int, size: int, rate: float) -> dict[str, float]:
    """Send ``count`` messages through a relay; return p50/p99 of each hop in ms."""
    ns = f"demo.{uuid.uuid4().hex[:8]}"
    src, dst = f"{ns}.in", f"{ns}.out"
    await broker.ensure(src, "relay")
    await broker.ensure(dst, "sink")
    await warm_up(broker, src, "relay", "relay-1", STAMPS.pack(0, 0))
    await warm_up(broker, dst, "sink", "sink-1", STAMPS.pack(0, 0))
    hops = {name: HdrHistogram(1, HIST_MAX_US, 3) for name in ("in", "out", "total")}
    filler = bytes(max(0, size - STAMPS.size))

    async def source() -> None:
        t0 = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            await broker.publish(src, [STAMPS.pack(time.perf_counter_ns(), 0) + filler])

    async def relay() -> None:
        moved = 0
        while moved < count:
            got = await broker.consume(src, "relay", "relay-1", 64, 0.05)
            if not got:
                continue
            now = time.perf_counter_ns()
            out = [STAMPS.pack(STAMPS.unpack_from(wire(d.data))[0], now) + wire(d.data)[STAMPS.size :] for d in got]
            await broker.publish(dst, out)
            await broker.ack(src, "relay", got)  # after the publish: a crash here redelivers, never loses
            moved += len(got)

    async def sink() -> None:
        seen = 0
        while seen < count:
            got = await broker.consume(dst, "sink", "sink-1", 64, 0.05)
            now = time.perf_counter_ns()
            for d in got:
                sent, relayed = STAMPS.unpack_from(wire(d.data))
                hops["in"].record_value(max(1, (relayed - sent) // 1000))
                hops["out"].record_value(max(1, (now - relayed) // 1000))
                hops["total"].record_value(max(1, (now - sent) // 1000))
            if got:
                await broker.ack(dst, "sink", got)
            seen += len(got)

    await asyncio.wait_for(asyncio.gather(source(), relay(), sink()), timeout=WARMUP_S + count / rate * 2)
    await broker.delete(src)
    await broker.delete(dst)
    out: dict[str, float] = {}
    for name, h in hops.items():
        out[f"{name}_p50_ms"] = h.get_value_at_percentile(50) / 1000
        out[f"{name}_p99_ms"] = h.get_value_at_percentile(99) / 1000
    return out


@click.command("broker-demo")
@click.option("--broker", "broker_url", help="broker URL (default: settings, memory://)")
@click.option("--count", type=int, default=200, show_default=True)
@click.option("--size", type=int, default=100_000, show_default=True, help="message bytes")
@click.option("--rate", type=float, default=100.0, show_default=True, help="messages per second")
def broker_demo(broker_url: str | None, count: int, size: int, rate: float) -> None:
    """Pass messages through one stage; print hop latency."""
    settings = load_settings(broker={"url": broker_url})

    async def go() -> dict[str, float]:
        async with await connect(settings.broker.url, settings) as broker:
            return await relay_demo(broker, count, size, rate)

    result = asyncio.run(go())
    click.echo(f"{count} messages of {size} bytes at {rate:g}/s through {redact_url(settings.broker.url)}")
    for hop in ("in", "out", "total"):
        click.echo(f"  {hop:>5}: p50 {result[f'{hop}_p50_ms']:.3f} ms  p99 {result[f'{hop}_p99_ms']:.3f} ms")
