"""The broker hop benchmark and the relay demo: every message counted, the raw redis-py loop beside the layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tests.servers import Server
from visionpipe.broker import MemoryBroker
from visionpipe.cli import main
from visionpipe.loadgen.bench.broker_hop import hop, ratios, run_bench

VISIONPIPE = str(Path(sys.executable).parent / "visionpipe")


def bench(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VISIONPIPE, "bench", *args], capture_output=True, text=True, timeout=timeout)


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


def test_broker_bench_measures_the_hop_on_both_brokers(
    redis_server: Server, kafka_server: Server, tmp_path: Path
) -> None:
    proc = bench(
        "broker",
        "--broker",
        redis_server.url,
        "--broker",
        kafka_server.url,
        "--size",
        "30000",
        "--rate",
        "50",
        "--duration",
        "1",
        "--no-baseline",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = json.loads((tmp_path / "broker-bench.json").read_text())
    assert [r["broker"].split(":")[0] for r in rows] == ["redis", "kafka"]
    for row in rows:
        assert row["received"] == row["sent"] >= 40 and row["p50_ms"] > 0
    assert "| redis | 30 KB |" in (tmp_path / "broker-bench.md").read_text()
