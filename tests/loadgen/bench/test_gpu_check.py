"""``gpu-check``: the CPU mode end to end, and the parts that keep a short GPU loan from losing its figures.

The GPU mode is the same code on the lent machine; the CPU mode is what lets CI know the script works
before one is lent. The runner's budget, its writes after every section, a section that fails, a child
process that runs out of time and a section that hangs are each checked here with stand-in sections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from visionpipe.loadgen.bench import gpu_check
from visionpipe.loadgen.bench.gpu_check import run_plan
from visionpipe.loadgen.bench.gpu_report import goals, markdown
from visionpipe.loadgen.bench.gpu_sections import SECTIONS, Context, Limits, Section, non_dnn_share_at_p50, run_child

ROOT = Path(__file__).resolve().parents[3]
ENV = {"python": "3", "torch": "t", "torchvision": "v", "device": "d", "cpus": 1, "loadavg_start": "0"}


@pytest.fixture
def no_torch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "environment", lambda device: dict(ENV))


def _ctx(tmp_path: Path) -> Context:
    return Context("cpu", True, tmp_path)


def _read(out: Path) -> dict[str, Any]:
    return json.loads((out / "gpu-check.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_cpu_mode_writes_every_section(tmp_path: Path) -> None:
    """Through benchmarks/gpu-check.sh, as `make gpu-check-cpu` runs it (~2 min on 2 busy cores)."""
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu-check.sh"), str(tmp_path), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = _read(tmp_path)
    assert doc["finished"] and [s["name"] for s in doc["plan"]] == [s.name for s in SECTIONS]
    for name, rec in doc["sections"].items():
        assert rec["state"] == "ok", (name, rec.get("error"), rec.get("traceback"))
    assert doc["sections"]["tests"]["result"]["exit_code"] == 0 and doc["sections"]["tests"]["result"]["failures"] == 0
    for name in ("overlap", "policies"):
        runs = doc["sections"][name]["result"]
        assert set(runs) == {"detector", "classifier"} and all(r["rows"] and r["targets"] for r in runs.values())
    run = doc["sections"]["run"]["result"]
    for label, rec in run.items():
        assert label == "weights" or rec.get("summary", {}).get("images_per_s", 0) > 0, (label, rec)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [line["section"] for line in lines] == [s.name for s in SECTIONS]
    assert all(g["state"] == "not run (CPU mode)" for g in doc["goals"])
    text = (tmp_path / "gpu-check.md").read_text()
    assert all(f"### {s.title}" in text for s in SECTIONS) and "### Goals" in text
    assert (tmp_path / "gpu-check.log").stat().st_size > 0


def test_a_tiny_budget_skips_every_section_and_still_writes_valid_files(tmp_path: Path, no_torch_env: None) -> None:
    run_plan(SECTIONS, _ctx(tmp_path), tmp_path, budget_s=0.5, skip=(), command="x")
    doc = _read(tmp_path)
    assert doc["finished"] and {rec["state"] for rec in doc["sections"].values()} == {"skipped"}
    assert all("of the budget left" in rec["reason"] for rec in doc["sections"].values())
    assert "_skipped_: needs about" in (tmp_path / "gpu-check.md").read_text()


def _section(name: str, estimate: float, body: Any) -> Section:
    return Section(name, name.title(), body, estimate, estimate)


def test_sections_run_while_they_fit_and_the_files_are_rewritten_after_each(tmp_path: Path, no_torch_env: None) -> None:
    seen: dict[str, Any] = {}

    def first(ctx: Context, limits: Limits) -> dict[str, Any]:
        time.sleep(0.3)
        return {"value": 1}

    def second(ctx: Context, limits: Limits) -> dict[str, Any]:
        seen.update(_read(tmp_path)["sections"])  # what a kill at this moment would leave
        raise RuntimeError("boom")

    def never(ctx: Context, limits: Limits) -> dict[str, Any]:
        raise AssertionError("a section that does not fit must not run")

    plan = [_section("first", 0.5, first), _section("second", 0.1, second), _section("third", 5.0, never)]
    run_plan(plan, _ctx(tmp_path), tmp_path, budget_s=1.5, skip=(), command="x")
    assert seen["first"]["state"] == "ok" and seen["first"]["result"] == {"value": 1}
    assert seen["second"]["state"] == "running"
    doc = _read(tmp_path)
    assert doc["sections"]["second"]["state"] == "failed" and "boom" in doc["sections"]["second"]["error"]
    third = doc["sections"]["third"]
    assert third["state"] == "skipped" and third["reason"].startswith("needs about 5 s")


def test_skip_leaves_a_section_out_and_says_so(tmp_path: Path, no_torch_env: None) -> None:
    plan = [_section("first", 0.1, lambda ctx, limits: {})]
    run_plan(plan, _ctx(tmp_path), tmp_path, budget_s=10, skip=("first",), command="x")
    assert _read(tmp_path)["sections"]["first"] == {
        "title": "First",
        "estimate_s": 0.1,
        "state": "skipped",
        "reason": "left out with --skip",
    }


def test_a_hanging_section_is_ended_with_every_stack_and_leaves_the_record(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from visionpipe.loadgen.bench import gpu_check
        from visionpipe.loadgen.bench.gpu_sections import Context, Section
        gpu_check.environment = lambda device: {ENV!r}
        gpu_check.HARD_GRACE_S = 0.5
        done = Section("done", "Done", lambda ctx, limits: {{"ok": 1}}, 0.1, 0.1)
        hang = Section("hang", "Hang", lambda ctx, limits: time.sleep(60), 0.2, 0.2)
        out = Path({str(tmp_path)!r})
        gpu_check.run_plan([done, hang], Context("cpu", True, out), out, 30, (), "x")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Timeout" in proc.stderr and "in <lambda>" in proc.stderr
    doc = _read(tmp_path)
    assert doc["sections"]["done"]["result"] == {"ok": 1} and doc["sections"]["hang"]["state"] == "running"
    assert not doc["finished"] and "**still running**" in (tmp_path / "gpu-check.md").read_text()


def test_a_child_that_runs_out_of_time_is_recorded_and_the_next_one_still_runs() -> None:
    slow = run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"], 1.0)
    assert slow["timed_out"] and slow["exit_code"] is None and "started" in slow["tail"]
    fast = run_child([sys.executable, "-c", "print('hi')"], 30.0)
    assert fast["exit_code"] == 0 and not fast["timed_out"] and fast["stdout"] == "hi\n"


def test_non_dnn_share_is_taken_around_the_median_request(tmp_path: Path) -> None:
    records = []
    for i in range(20):
        dnn = 50.0 if 8 <= i <= 12 else 10.0  # the requests around the median spend half their time in the models
        cats = {"decode": 100.0 - dnn - 5.0, "detector": dnn, "classifier": 5.0, "total": 100.0 + i}
        records.append({"ok": True, "latency_ms": cats})
    records.append({"ok": False, "error": "bad"})
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    share = non_dnn_share_at_p50(path)
    assert share is not None and share == pytest.approx(1 - (50 + 5) / 100, abs=0.01)


def _gpu_doc(**results: Any) -> dict[str, Any]:
    sections = {name: {"state": "ok", "estimate_s": 1, "elapsed_s": 1, "result": r} for name, r in results.items()}
    return {"mode": "gpu", "command": "x", "env": ENV, "sections": sections, "plan": []}


def test_goals_are_met_not_met_or_not_run_never_guessed() -> None:
    doc = _gpu_doc(
        classifier={"stage_over_raw": 0.95},
        batch1={
            "efficientnet_lite0": {"eager": {"request": {"p50_ms": 4.0}}, "cuda_graphs": {"request": {"p50_ms": 2.4}}}
        },
    )
    doc["sections"]["decode"] = {"state": "skipped", "estimate_s": 25, "reason": "needs about 25 s"}
    by = {g["section"]: g for g in goals(doc)}
    assert by["classifier"]["state"] == "yes" and by["batch1"]["value"] == 0.6 and by["batch1"]["state"] == "NO"
    assert by["decode"]["state"] == "not run (section decode: skipped)"
    assert by["overlap"]["state"] == "not run (section overlap: not reached)"


def test_report_says_which_section_failed() -> None:
    doc = _gpu_doc()
    doc["plan"] = [{"name": "tests", "title": "GPU tests", "estimate_s": 75}, {"name": "run", "title": "Run"}]
    doc["sections"]["tests"] = {"state": "failed", "error": "RuntimeError: boom", "elapsed_s": 0.5, "estimate_s": 75}
    text = markdown(doc)
    assert "**failed** after 0.5 s: `RuntimeError: boom`" in text and "_not reached_" in text
