"""``visionpipe bench broker``: the produce -> consume -> ack hop, per broker and payload size.

Why a raw hop benchmark beside the pipeline's load generator: it isolates what
the broker itself costs at the payload sizes our streams carry (JPEG frames
~30-150 KB, letterboxed 640x640 tensors 1.2 MB), so a pipeline result can be
split into broker time and everything else. Open loop: messages are published
on a fixed schedule whether or not the consumer keeps up, so a slow consumer
shows up as latency instead of hiding as a lower send rate. A publish call that
takes longer than the interval does delay the next one (latency runs from the
call); such a point delivers less than offered and is marked "(behind)": it is
over capacity, not a hop time. Rate 0 means saturation: publish as fast as a
bounded window of unconsumed messages allows.

``--batch N`` publishes N messages per ``publish`` call (made together, as a
stage's batch output is, every N/rate s) and consumes and acks up to N per call,
so pipelining is measured; batch 1 is one message per call everywhere.

Beside every ``redis://`` broker the command also measures a naive baseline
(``redis-raw`` rows, ``broker_raw.py``) against the same server, at the same
sizes and rates, in the same run. The layer's Redis rows are read as ratios
to those, not to numbers from another day.

Producer and consumer run in one process, so the hop is timed with one
monotonic clock (the send time travels in the first 8 bytes of each message).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from hdrh.histogram import HdrHistogram

from visionpipe.broker import Broker, connect, wire
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
# The consumer gives up when the producer is done and nothing more arrives for this long (a lost message).
DRAIN_STALL_S = 30.0
GROUP = "bench"
# Paced points offering more than this are skipped: 1,000 msg/s of 1.2 MB tensors (1.2 GB/s) is beyond every
# backend on loopback, so such a point only measures saturation again, with an unbounded backlog.
MAX_OFFERED_MBPS = 500.0
RAW = "redis-raw"


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
    cpu_us_per_msg: float = 0.0  # this process's CPU time (all its threads: client, not server) per message
    load1: float = 0.0  # the machine's 1-minute load average when the point finished


def hop_result(
    broker: str,
    size: int,
    rate: float,
    batch: int,
    sent: int,
    received: int,
    seconds: float,
    cpu_s: float,
    hist: HdrHistogram,
) -> HopResult:
    def ms(pct: float) -> float:
        return round(hist.get_value_at_percentile(pct) / 1000, 3)

    return HopResult(
        broker=broker,
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
        cpu_us_per_msg=round(cpu_s * 1e6 / max(1, received), 1),
        load1=round(os.getloadavg()[0], 2),
    )


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
        last = time.monotonic()
        while not (producer_done.is_set() and received >= sent):
            got = await broker.consume(stream, GROUP, "bench", batch, 0.05)
            now = time.perf_counter_ns()
            for d in got:
                hist.record_value(max(1, (now - STAMP.unpack_from(wire(d.data))[0]) // 1000))
            received += len(got)
            if got:
                await broker.ack(stream, GROUP, got)
                last = time.monotonic()
            elif producer_done.is_set() and time.monotonic() - last > DRAIN_STALL_S:
                raise RuntimeError(f"{sent - received} of {sent} messages never came back from {broker!r}")
            if sent - received < SATURATION_WINDOW // 2:
                room.set()

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(produce(), consume())
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    await broker.delete(stream)
    name = redact_url(broker.url).split("?")[0]
    return hop_result(name, size, rate, batch, sent, received, seconds, cpu_s, hist)


def _label(r: HopResult) -> str:
    return r.broker.split(":")[0]


def _offered(r: HopResult) -> str:
    return "max" if r.rate <= 0 else f"{r.rate:g}"


def _size(r: HopResult) -> str:
    return f"{r.size_bytes / 1e6:.1f} MB" if r.size_bytes >= 1_000_000 else f"{r.size_bytes // 1000} KB"


def markdown(results: list[HopResult]) -> str:
    lines = [
        "| broker | size | offered msg/s | batch | msg/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | CPU µs/msg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        behind = "" if kept_schedule(r) else " (behind)"
        lines.append(
            f"| {_label(r)} | {_size(r)} | {_offered(r)} | {r.batch} | {r.msg_per_s:g}{behind} | "
            f"{r.mb_per_s:g} | {r.p50_ms:g} | {r.p90_ms:g} | {r.p99_ms:g} | {r.max_ms:g} | {r.cpu_us_per_msg:g} |"
        )
    return "\n".join(lines)


def kept_schedule(r: HopResult) -> bool:
    """Whether a paced point delivered its offered rate (within 5 %); saturation points always "keep" theirs.

    Latency runs from the publish call, so a producer that falls behind its schedule hides the wait it
    would have imposed (coordinated omission): such a point is over capacity and its latency is not a hop's.
    """
    return r.rate <= 0 or r.msg_per_s >= 0.95 * r.rate


def ratios(results: list[HopResult]) -> str:
    """The layer's Redis rows against the raw loop's at the same size and rate (same run, same server).

    Throughput ratio above 1 and latency ratios below 1 mean the layer is faster. Latency is compared only
    where both kept a paced schedule (saturation latency is the window over the throughput). Empty without
    raw rows.
    """
    raw = {(r.size_bytes, r.rate): r for r in results if _label(r) == RAW}
    rows = [r for r in results if _label(r) in ("redis", "rediss") and (r.size_bytes, r.rate) in raw]
    if not rows:
        return ""
    lines = [
        "| size | offered msg/s | batch | msg/s layer / raw | p50 layer / raw | p99 layer / raw |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        b = raw[(r.size_bytes, r.rate)]
        if r.rate > 0 and kept_schedule(r) and kept_schedule(b):
            p50, p99 = f"{r.p50_ms / b.p50_ms:.2f}", f"{r.p99_ms / b.p99_ms:.2f}"
        else:
            p50 = p99 = "saturated" if r.rate <= 0 else "over capacity"
        lines.append(f"| {_size(r)} | {_offered(r)} | {r.batch} | {r.msg_per_s / b.msg_per_s:.2f} | {p50} | {p99} |")
    return "\n".join(lines)


async def run_bench(
    urls: list[str],
    sizes: list[int],
    rates: list[float],
    duration_s: float,
    batch: int | Sequence[int] = 1,
    *,
    baseline: bool = False,
    max_offered_mbps: float = MAX_OFFERED_MBPS,
) -> list[HopResult]:
    """Every (broker, batch, size, rate) point; with ``baseline``, a raw-loop point after each batch-1 Redis one."""
    settings = load_settings()
    batches = [batch] if isinstance(batch, int) else list(batch)
    results = []

    def record(result: HopResult) -> None:
        click.echo(json.dumps(asdict(result)), err=True)
        results.append(result)

    points = []
    for size in sizes:
        for rate in rates:
            if rate * size / 1e6 > max_offered_mbps:
                click.echo(f"skipped: {rate:g} msg/s of {size} B offers over {max_offered_mbps:g} MB/s", err=True)
            else:
                points.append((size, rate))
    from visionpipe.loadgen.bench.broker_raw import raw_redis_hop  # it imports this module's helpers

    for url in urls:
        raw_here = baseline and url.startswith(("redis://", "rediss://"))
        async with await connect(url, settings) as broker:
            for n in batches:
                for size, rate in points:
                    record(await hop(broker, size, rate, duration_s, n))
                    if raw_here and n == batches[0]:  # interleaved, so both see the same machine load
                        record(await asyncio.to_thread(raw_redis_hop, url, size, rate, duration_s))
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
    default=[100.0, 1000.0, 0.0],
    show_default=True,
    help="offered msg/s, 0 = saturate; repeat",
)
@click.option("--duration", "duration_s", type=float, default=3.0, show_default=True, help="seconds per point")
@click.option(
    "--batch",
    "batches",
    multiple=True,
    type=click.IntRange(min=1),
    default=[1],
    show_default=True,
    help="messages per publish call, and most per consume call; repeat to sweep (e.g. 1 and 16)",
)
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="beside each redis:// broker, a naive raw redis-py loop on the same server (rows 'redis-raw')",
)
@click.option(
    "--max-offered-mbps",
    type=float,
    default=MAX_OFFERED_MBPS,
    show_default=True,
    help="skip paced points offering more MB/s than this (saturation rows cover them)",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write results here")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for broker-bench.json and broker-bench.md (to read beside a `loadgen compare` report)",
)
def bench_broker(
    urls: tuple[str, ...],
    sizes: tuple[int, ...],
    rates: tuple[float, ...],
    duration_s: float,
    batches: tuple[int, ...],
    baseline: bool,
    max_offered_mbps: float,
    json_path: Path | None,
    out_dir: Path | None,
) -> None:
    """Produce -> consume -> ack hop latency and throughput per broker, payload size and batch."""
    results = asyncio.run(
        run_bench(
            list(urls),
            list(sizes),
            list(rates),
            duration_s,
            list(batches),
            baseline=baseline,
            max_offered_mbps=max_offered_mbps,
        )
    )
    doc = json.dumps([asdict(r) for r in results], indent=1) + "\n"
    text = markdown(results)
    table = ratios(results)
    if table:
        text += f"\n\nRedis layer / raw redis-py loop (same server, same run):\n\n{table}"
    if json_path is not None:
        json_path.write_text(doc)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "broker-bench.json").write_text(doc)
        (out_dir / "broker-bench.md").write_text(f"# Broker hop benchmark\n\n{text}\n")
    click.echo(text)
