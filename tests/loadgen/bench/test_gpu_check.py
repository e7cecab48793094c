"""``make gpu-check``'s script, in its CPU mode: every section runs and lands in the JSON and the Markdown.

The GPU mode is the same code on the lent machine; this is what lets CI know the script works before one is lent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from visionpipe.loadgen.bench.gpu_report import markdown

ROOT = Path(__file__).resolve().parents[3]
SECTIONS = ("tests", "executor", "batch1", "decode", "classifier", "run")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_cpu_mode_writes_every_section(tmp_path: Path) -> None:
    """Through benchmarks/gpu-check.sh, as `make gpu-check-cpu` runs it (~50 s on 2 cores)."""
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu-check.sh"), str(tmp_path), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu-check.json").read_text())
    for name in SECTIONS:
        assert "error" not in doc[name], (name, doc[name].get("traceback"))
    assert doc["tests"]["result"]["exit_code"] == 0 and doc["tests"]["result"]["failures"] == 0
    runs = doc["executor"]["result"]
    assert set(runs) == {"mobilenet_v3_small", "detector", "classifier"}
    assert all(r["rows"] and r["targets"] for r in runs.values())
    assert all(rec["summary"]["ok"] > 0 for rec in doc["run"]["result"].values())
    text = (tmp_path / "gpu-check.md").read_text()
    for heading in (
        "GPU tests",
        "Executor on the device",
        "Batch-1 latency",
        "Decode stage",
        "Classifier stage",
        "visionpipe run",
    ):
        assert heading in text


def test_report_says_which_section_failed() -> None:
    doc = {
        "mode": "gpu",
        "command": "x",
        "elapsed_s": 1.0,
        "env": {"device": "d", "python": "3", "torch": "t", "torchvision": "v", "cpus": 1, "loadavg_start": "0"},
        "tests": {"error": "RuntimeError: boom", "elapsed_s": 0.5},
    }
    text = markdown(doc)
    assert "**failed** after 0.5 s: `RuntimeError: boom`" in text and "_not run_" in text
