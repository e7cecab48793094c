"""``visionpipe bench broker``: the produce -> consume -> ack hop, per broker and payload size.

Why a raw hop benchmark beside the pipeline's load generator: it isolates what
the broker itself costs at the payload sizes our streams carry (JPEG frames
~30-150 KB, letterboxed 640x640 tensors 1.2 MB), so a pipeline result can be
split into broker time and everything else. Open loop: messages are published
on a fixed schedule whether or not the consumer keeps up, so a slow broker
shows up as latency instead of hiding as a lower send rate. Rate 0 means
saturation: publish as fast as a bounded window of unconsumed messages allows.

Producer and consumer run in one process, so the hop is timed with one
monotonic clock (the send time travels in the first 8 bytes of each message).
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from hdrh.histogram import HdrHistogram

from visionpipe.broker import Broker, connect
from visionpipe.broker.security import redact_url
from visionpipe.settings import load_settings

STAMP = struct.Struct("<q")
# Histogram range 1 µs .. 60 s at 3 significant digits: covers a stalled Kafka rebalance without clipping.
HIST_MAX_US = 60_000_000
# Saturation mode keeps at most this many messages published but not yet consumed: enough to keep
# the broker busy, small enough that the consumer's backlog does not grow without bound.
SATURATION_WINDOW = 256
# A Kafka consumer's first fetch waits for the group join; warm up before the clock starts.
WARMUP_S = 30.0
GROUP = "bench"


@dataclass
class HopResult:
    broker: str
    size_bytes: int
    rate: float  # offered msg/s; 0 = saturation
    batch: int
    sent: int
    received: int
    seconds: float
    msg_per_s: float
    mb_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


async def warm_up(broker: Broker, stream: str, group: str, consumer: str, message: bytes) -> None:
    """Send one message round before the clock starts (a Kafka member's first consume waits for the join)."""
    await broker.publish(stream, [message])
    deadline = time.monotonic() + WARMUP_S
    while time.monotonic() < deadline:
        got = await broker.consume(stream, group, consumer, 10, 0.2)
        if got:
            await broker.ack(stream, group, got)
            return
    raise RuntimeError(f"no message came back from {redact_url(broker.url)} in {WARMUP_S}s")


async def hop(broker: Broker, size: int, rate: float, duration_s: float, batch: int) -> HopResult:
    """One measurement: ``rate`` msg/s (0 = as fast as possible) of ``size`` bytes for ``duration_s``."""
    stream = f"bench.{uuid.uuid4().hex[:8]}"
    await broker.ensure(stream, GROUP)
    await warm_up(broker, stream, GROUP, "bench", STAMP.pack(0))
    filler = bytes(max(0, size - STAMP.size))
    hist = HdrHistogram(1, HIST_MAX_US, 3)
    sent = received = 0
    producer_done = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def produce() -> None:
        nonlocal sent
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < duration_s:
            if rate > 0:
                delay = t0 + i * batch / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await room.wait()
            msgs = [STAMP.pack(time.perf_counter_ns()) + filler for _ in range(batch)]
            await broker.publish(stream, msgs)
            sent += batch
            i += 1
            if rate <= 0 and sent - received >= SATURATION_WINDOW:
                room.clear()
        producer_done.set()

    async def consume() -> None:
        nonlocal received
        while not (producer_done.is_set() and received >= sent):
            got = await broker.consume(stream, GROUP, "bench", max(batch, 64), 0.05)
            now = time.perf_counter_ns()
            for d in got:
                hist.record_value(max(1, (now - STAMP.unpack_from(d.data)[0]) // 1000))
            received += len(got)
            if got:
                await broker.ack(stream, GROUP, got)
            if sent - received < SATURATION_WINDOW // 2:
                room.set()

    t0 = time.perf_counter()
    await asyncio.gather(produce(), consume())
    seconds = time.perf_counter() - t0
    await broker.delete(stream)

    def ms(pct: float) -> float:
        return round(hist.get_value_at_percentile(pct) / 1000, 3)

    return HopResult(
        broker=redact_url(broker.url).split("?")[0],
        size_bytes=size,
        rate=rate,
        batch=batch,
        sent=sent,
        received=received,
        seconds=round(seconds, 3),
        msg_per_s=round(received / seconds, 1),
        mb_per_s=round(received * size / seconds / 1e6, 2),
        p50_ms=ms(50),
        p90_ms=ms(90),
        p99_ms=ms(99),
        max_ms=round(hist.get_max_value() / 1000, 3),
    )


def markdown(results: list[HopResult]) -> str:
    lines = [
        "| broker | size | offered msg/s | batch | msg/s | MB/s | p50 ms | p90 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        offered = "max" if r.rate <= 0 else f"{r.rate:g}"
        lines.append(
            f"| {r.broker.split(':')[0]} | {r.size_bytes // 1000} KB | {offered} | {r.batch} | {r.msg_per_s:g} | "
            f"{r.mb_per_s:g} | {r.p50_ms:g} | {r.p90_ms:g} | {r.p99_ms:g} | {r.max_ms:g} |"
        )
    return "\n".join(lines)


async def run_bench(
    urls: list[str], sizes: list[int], rates: list[float], duration_s: float, batch: int
) -> list[HopResult]:
    settings = load_settings()
    results = []
    for url in urls:
        async with await connect(url, settings) as broker:
            for size in sizes:
                for rate in rates:
                    result = await hop(broker, size, rate, duration_s, batch)
                    click.echo(json.dumps(asdict(result)), err=True)
                    results.append(result)
    return results


@click.command("broker")
@click.option(
    "--broker",
    "urls",
    multiple=True,
    default=["memory://bench"],
    show_default=True,
    help="broker URL; repeat to compare (redis://..., kafka://...)",
)
@click.option(
    "--size",
    "sizes",
    multiple=True,
    type=int,
    default=[30_000, 150_000, 1_228_800],
    show_default=True,
    help="payload bytes; repeat",
)
@click.option(
    "--rate",
    "rates",
    multiple=True,
    type=float,
    default=[100.0, 0.0],
    show_default=True,
    help="offered msg/s, 0 = saturate; repeat",
)
@click.option("--duration", "duration_s", type=float, default=5.0, show_default=True, help="seconds per point")
@click.option("--batch", type=int, default=1, show_default=True, help="messages per publish call")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write results here")
def bench_broker(
    urls: tuple[str, ...],
    sizes: tuple[int, ...],
    rates: tuple[float, ...],
    duration_s: float,
    batch: int,
    json_path: Path | None,
) -> None:
    """Produce -> consume -> ack hop latency and throughput per broker and payload size."""
    results = asyncio.run(run_bench(list(urls), list(sizes), list(rates), duration_s, batch))
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    click.echo(markdown(results))
