"""peek, the dead-letter tools, the hop benchmark and the demo, on real brokers."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests.broker.test_contract import take
from tests.servers import Server
from visionpipe.broker import Broker, MemoryBroker
from visionpipe.broker.bench import hop, ratios, run_bench
from visionpipe.broker.dlq import list_dead, replay_dead
from visionpipe.cli import main


async def test_peek_reads_without_taking(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"a", b"b", b"c"], ["k"] * 3)
    assert [d.data for d in await broker.peek(stream, 2)] == [b"a", b"b"]
    assert (await broker.backlog(stream, "g")).total == 3
    assert sorted(d.data for d in await take(broker, stream, "g", "c", 3)) == [b"a", b"b", b"c"]


async def test_dlq_list_then_replay_to_origin_once(broker: Broker, ns: str) -> None:
    dead, origin = f"{ns}.dead", f"{ns}.frames"
    await broker.ensure(dead)
    await broker.ensure(origin, "decode")
    await broker.dead_letter(dead, reason="bad", data=b"img1", stage="decode", origin=origin, request_id="r1")
    await broker.dead_letter(dead, reason="worse", data=b"img2", stage="decode", origin=origin, request_id="r1")
    listed = [e.as_dict() for e in await list_dead(broker, dead, 10)]
    assert [(r["reason"], r["request_id"], r["bytes"]) for r in listed] == [("bad", "r1", 4), ("worse", "r1", 4)]
    assert await replay_dead(broker, dead, 10) == 2
    back = await take(broker, origin, "decode", "c", 2)
    assert [d.data for d in back] == [b"img1", b"img2"] and {d.key for d in back} == {"r1"}
    assert await replay_dead(broker, dead, 10, timeout_s=5.0) == 0, "a replayed entry is not replayed again"


async def test_hop_bench_counts_every_message() -> None:
    broker = MemoryBroker("memory://bench-test")
    for rate in (200.0, 0.0):
        r = await hop(broker, size=2000, rate=rate, duration_s=0.3, batch=2)
        assert r.received == r.sent > 0
        assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms
    assert r.msg_per_s > 200, "saturation mode outruns the paced one"


async def test_raw_redis_baseline_beside_the_layer(redis_server: Server) -> None:
    rates = [200.0, 0.0, 1e6]  # the last offers 2 GB/s: skipped
    rows = await run_bench([redis_server.url], [2000], rates, 0.3, [1, 4], baseline=True, max_offered_mbps=100)
    got = [(r.broker.split(":")[0], r.batch, r.rate) for r in rows]
    layer, raw = "redis", "redis-raw"
    assert got == [(layer, 1, 200), (raw, 1, 200), (layer, 1, 0), (raw, 1, 0), (layer, 4, 200), (layer, 4, 0)]
    for r in rows:
        assert r.received == r.sent > 0 and 0 < r.p50_ms <= r.p99_ms
    assert "| 2 KB | max | 4 |" in ratios(rows)


def test_bench_and_demo_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "hop.json"
    args = ["bench", "broker", "--broker", "memory://cli", "--size", "1000", "--rate", "0", "--duration", "0.2"]
    result = runner.invoke(main, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| memory | 1 KB | max |" in result.output
    assert json.loads(out.read_text())[0]["received"] > 0
    result = runner.invoke(main, ["broker-demo", "--broker", "memory://demo", "--count", "20", "--rate", "200"])
    assert result.exit_code == 0, result.output
    assert "total: p50" in result.output
