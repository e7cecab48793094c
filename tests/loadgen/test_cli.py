"""``visionpipe loadgen`` as a user runs it: subprocesses, real brokers, real stages where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.servers import Server
from visionpipe.loadgen.report import SECTIONS

REPO = Path(__file__).resolve().parents[2]
VISIONPIPE = str(Path(sys.executable).parent / "visionpipe")
PASSTHROUGH = f"{sys.executable} -m tests.loadgen.passthrough"
QUICK = ["--synthetic", "64x48", "--warmup", "1", "--drain-timeout", "10", "--no-progress"]


# Stand-in stages this many times slower than by default: the detector takes 0.25 s a message, so the pipeline
# keeps up with about 4 requests/s.
SLOW = {"PASSTHROUGH_COMPUTE_SCALE": "83"}


def loadgen(*args: str, timeout: float = 100, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [VISIONPIPE, "loadgen", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def redis_keys(server: Server, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(server.url)
    try:
        return list(client.scan_iter(f"{prefix}*"))
    finally:
        client.close()


def test_run_spawns_stages_reports_and_deletes_its_streams(redis_server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = loadgen(
        "run",
        "--broker",
        redis_server.url,
        "--spawn",
        "--stage-command",
        PASSTHROUGH,
        "--pattern",
        "burst",
        "--rate",
        "20",
        "--burst-factor",
        "3",
        "--duration",
        "1.5",
        "--out",
        str(out),
        *QUICK,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    doc = json.loads((out / "results.json").read_text())
    (run,) = doc["runs"]
    s = run["summary"]
    assert s["sent"] >= 30 and (s["completed"], s["lost"], s["duplicates"]) == (s["sent"], 0, 0)
    assert s["prefix"].startswith("lg")
    assert redis_keys(redis_server, s["prefix"]) == []  # cleaned up
    assert "throughput" in proc.stdout


def test_keep_leaves_the_streams_for_inspection(redis_server: Server, tmp_path: Path) -> None:
    proc = loadgen(
        "run",
        "--broker",
        redis_server.url,
        "--spawn",
        "--stage-command",
        PASSTHROUGH,
        "--keep",
        "--rate",
        "10",
        "--duration",
        "0.5",
        "--out",
        str(tmp_path),
        *QUICK,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    prefix = json.loads((tmp_path / "results.json").read_text())["runs"][0]["summary"]["prefix"]
    assert len(redis_keys(redis_server, prefix)) >= 4  # frames, tensors, crops, results


def test_lost_results_make_the_run_fail(redis_server: Server, tmp_path: Path, ns: str) -> None:
    # External mode with no stages behind the prefix: nothing ever answers.
    proc = loadgen(
        "run",
        "--broker",
        redis_server.url,
        "--prefix",
        ns,
        "--rate",
        "10",
        "--duration",
        "0.3",
        "--out",
        str(tmp_path),
        "--synthetic",
        "32x32",
        "--warmup",
        "0",
        "--drain-timeout",
        "0.5",
        "--no-progress",
    )
    assert proc.returncode == 3, proc.stderr + proc.stdout
    s = json.loads((tmp_path / "results.json").read_text())["runs"][0]["summary"]
    assert s["sent"] == 3 and s["lost"] == 3


@pytest.mark.timeout(240)
def test_a_saturated_comparison_says_so_at_the_top_and_ranks_nothing(
    redis_server: Server, kafka_server: Server, tmp_path: Path
) -> None:
    """12 requests/s offered to a pipeline that keeps up with 4: both runs are queues, so no broker "wins"."""
    out = tmp_path / "cmp"
    proc = loadgen(
        "compare",
        "--brokers",
        f"{redis_server.url},{kafka_server.url}",
        "--stage-command",
        PASSTHROUGH,
        "--rate",
        "12",
        "--duration",
        "2",
        "--out",
        str(out),
        *QUICK,
        env=SLOW,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["verdict"] == [] and set(doc["saturated"]) == {r["label"] for r in doc["runs"]} and len(doc["runs"]) == 2
    for info in doc["saturated"].values():
        assert info["achieved_rps"] < 0.6 * info["offered_rps"], info
    md = (out / "report.md").read_text()
    first = md.split("## Setup")[0]
    assert "**Saturated: no broker is ranked.**" in first and "- redis: results came back at" in first
    assert "--find-capacity" in first and "better" not in md.split("## Verdict")[1]
    assert "saturated, not ranked: redis" in " ".join(proc.stdout.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--broker", "memory://"], "memory://"),
        (["run", "--broker", "redis://127.0.0.1:1/0", "--images", ".", "--synthetic", "8x8"], "not both"),
        (["compare", "--brokers", "redis://127.0.0.1:1/0", "--rate", "-1"], "rate"),
        (["compare", "--brokers", "redis://127.0.0.1:1/0", "--stage-env", "FOO=1"], "VISIONPIPE_"),
    ],
)
def test_usage_errors_are_clear(args: list[str], message: str) -> None:
    proc = loadgen(*args, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.timeout(400)
def test_compare_redis_and_kafka_with_the_real_stages_on_cpu(
    redis_server: Server, kafka_server: Server, tmp_path: Path
) -> None:
    """The issue's acceptance run: real decode/detector/classifier subprocesses per broker, CPU, random weights."""
    out = tmp_path / "cmp"
    proc = loadgen(
        "compare",
        "--brokers",
        f"{redis_server.url},{kafka_server.url}",
        "--device",
        "cpu",
        "--weights",
        "random",
        "--stage-env",
        "VISIONPIPE_DETECTOR__SCORE_THRESHOLD=0",
        "--stage-env",
        "VISIONPIPE_DETECTOR__MAX_DETECTIONS=2",
        "--pattern",
        "poisson",
        "--rate",
        "2",
        "--duration",
        "3",
        "--synthetic",
        "160x120",
        "--warmup",
        "2",
        "--drain-timeout",
        "60",
        "--no-progress",
        "--out",
        str(out),
        timeout=380,
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in doc["runs"]] == [
        "redis",
        "tansu",
    ]  # the Kafka-protocol test broker, labelled as what it is
    for run in doc["runs"]:
        s = run["summary"]
        assert s["sent"] >= 2
        assert (s["completed"], s["lost"], s["duplicates"], s["failed"]) == (s["sent"], 0, 0, 0)
        assert s["objects_per_image"] == 2  # detector kept 2 boxes, each classified
        assert s["segments_ms"]["detector compute"]["mean"] > 0 and s["segments_ms"]["classifier compute"]["mean"] > 0
        assert 0 < s["non_dnn_share"] < 1
        assert run["resources"]["broker"]["rss_max_mb"] > 0
        # Batch sizes scraped from each stage's /metrics over the measured window.
        assert all(s["batch_means"][stage]["consumed_messages"] >= 1 for stage in ("decode", "detector", "classifier"))
    md = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in md
    for png in doc["plots"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert {v["metric"] for v in doc["verdict"]} >= {"throughput (req/s)", "latency p99 (ms)"}
