"""The report: every section, the verdict's ratios, plots that are real PNGs, and a failed broker shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.loadgen.test_recorder import MS, T0_MONO, T0_WALL, stamped
from visionpipe.loadgen.compare import failed_result, run_order
from visionpipe.loadgen.recorder import Recorder
from visionpipe.loadgen.report import SECTIONS, verdict, write_report
from visionpipe.loadgen.runner import RunResult
from visionpipe.loadgen.schedule import LoadSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(url: str, latency_ms: int, n: int = 20, cpu: float = 5.0) -> RunResult:
    rec = Recorder("r", T0_WALL, T0_MONO)
    for i in range(n):
        rec.sent(f"r-{i}", T0_MONO + i * 10 * MS)
        done = i * 10 * MS + latency_ms * MS
        rec.on_result(stamped(f"r-{i}", T0_WALL + i * 10 * MS), T0_MONO + done, T0_WALL + done)
    resources = {"broker": {"pid": 1, "cpu_percent": cpu, "rss_max_mb": 10.0, "rss_mean_mb": 9.0}}
    return RunResult(url, LoadSpec(), rec.summary(0.2), T0_WALL, 0.3, resources=resources)


def test_report_has_every_section_plot_and_a_verdict_with_ratios(tmp_path: Path) -> None:
    runs = [fake_run("redis://127.0.0.1:1/0", 40, cpu=5.0), fake_run("kafka://127.0.0.1:2", 80, cpu=20.0)]
    paths = write_report(runs, tmp_path, {"load": "constant 100 req/s, 0.2 s"})
    md = paths["markdown"].read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in md
    for name in ("latency_cdf.png", "latency_over_time.png", "breakdown.png"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in md
    doc = json.loads(paths["json"].read_text())
    assert [r["label"] for r in doc["runs"]] == ["redis", "kafka"]
    by_metric = {v["metric"]: v for v in doc["verdict"]}
    p50 = by_metric["latency p50 (ms)"]
    assert p50["winner"] == "redis" and p50["ratio"] == pytest.approx(2.0, rel=0.01)
    assert by_metric["broker CPU (% of a core)"]["ratio"] == pytest.approx(4.0)
    assert "| latency p50 (ms) | redis | 2.00× |" in md
    assert "| hop → detector |" in md and "**non-DNN share**" in md


def test_a_failed_broker_is_reported_and_the_other_still_plotted(tmp_path: Path) -> None:
    runs = [fake_run("redis://127.0.0.1:1/0", 40), failed_result("kafka://127.0.0.1:2", LoadSpec(), OSError("refused"))]
    paths = write_report(runs, tmp_path, {})
    md = paths["markdown"].read_text()
    assert "**kafka failed:** OSError: refused" in md
    assert paths["latency_cdf.png"].exists()
    assert verdict(json.loads(paths["json"].read_text())["runs"]) == []  # nothing to compare against


def test_rounds_run_in_abba_order_and_the_verdict_takes_each_brokers_median(tmp_path: Path) -> None:
    assert run_order(["r", "k"], 3) == [(1, "r"), (1, "k"), (2, "k"), (2, "r"), (3, "r"), (3, "k")]
    runs = []
    for round_no, url, latency in [
        (1, "redis://h:1/0", 10),
        (1, "kafka://h:2", 40),
        (2, "kafka://h:2", 50),
        (2, "redis://h:1/0", 90),
        (3, "redis://h:1/0", 20),
        (3, "kafka://h:2", 60),
    ]:
        run = fake_run(url, latency, n=5)
        run.round = round_no
        runs.append(run)
    paths = write_report(runs, tmp_path, {})
    doc = json.loads(paths["json"].read_text())
    assert [r["label"] for r in doc["runs"]] == ["redis #1", "redis #2", "redis #3", "kafka #1", "kafka #2", "kafka #3"]
    p50 = next(v for v in doc["verdict"] if v["metric"] == "latency p50 (ms)")
    # medians: redis 20 (of 10, 90, 20) and kafka 50 (of 40, 50, 60) — the redis outlier round does not decide
    assert p50["winner"] == "redis" and p50["ratio"] == pytest.approx(2.5, rel=0.01)
    assert "ABBA" in paths["markdown"].read_text()


def test_a_busy_host_is_said_before_anything_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.getloadavg", lambda: (9.5, 8.0, 7.0))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    md = write_report([fake_run("redis://127.0.0.1:1/0", 40)], tmp_path, {})["markdown"].read_text()
    assert md.split("## Setup")[0].count("**The host was busy**: load average 9.5 on 2 CPUs") == 1
    monkeypatch.setattr("os.getloadavg", lambda: (1.0, 1.0, 1.0))
    assert (
        "The host was busy"
        not in write_report([fake_run("redis://127.0.0.1:1/0", 40)], tmp_path, {})["markdown"].read_text()
    )


def test_a_difference_of_a_few_per_cent_is_nobodys_win(tmp_path: Path) -> None:
    runs = [fake_run("redis://127.0.0.1:1/0", 40), fake_run("kafka://127.0.0.1:2", 41)]
    paths = write_report(runs, tmp_path, {})
    p50 = next(v for v in json.loads(paths["json"].read_text())["verdict"] if v["metric"] == "latency p50 (ms)")
    assert p50["winner"] is None and p50["ratio"] == pytest.approx(41 / 40, rel=0.01)
    assert "| latency p50 (ms) | neither (within 5%) | 1.02× |" in paths["markdown"].read_text()
