"""Start the three pipeline stages as subprocesses for a run, and stop them after it.

``compare`` gives every broker the same pipeline: the same command, device
and weights, a fresh stream prefix per run (so runs never see each other's
messages), and a stage counts as started only once its ``/readyz`` answers,
so model loading is not charged to the first broker. Stopping is SIGTERM,
which the stages treat as "finish and ack in-flight batches, then exit".
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visionpipe.topology import STAGES

# Loading the models on a small, busy CPU takes tens of seconds; a GPU box is faster.
READY_TIMEOUT_S = 240.0
READY_POLL_S = 0.25
# SIGTERM lets a stage finish its batch; past this it is killed (the run is over anyway).
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 2000


def default_command() -> list[str]:
    """``visionpipe serve`` from the running interpreter's environment."""
    beside = Path(sys.executable).parent / "visionpipe"
    found = str(beside) if beside.exists() else shutil.which("visionpipe")
    if found is None:
        raise RuntimeError("the `visionpipe` command is not installed in this environment")
    return [found, "serve"]


@dataclass
class StageOptions:
    """What every stage of a run is started with; passed through unchanged to each broker's run."""

    device: str = "cpu"
    weights: str = "DEFAULT"  # the bundled models: random weights detect noise, twenty boxes an image
    command: Sequence[str] | None = None  # argv before the stage name; default `visionpipe serve`
    env: dict[str, str] = field(default_factory=dict)  # extra VISIONPIPE_* settings for every stage
    ready_timeout_s: float = READY_TIMEOUT_S


@dataclass
class StageProcess:
    stage: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


class StageSet:
    """The decode, detector and classifier processes of one run, as a context manager."""

    def __init__(self, broker_url: str, prefix: str, opts: StageOptions, log_dir: Path) -> None:
        self.broker_url, self.prefix, self.opts, self.log_dir = broker_url, prefix, opts, log_dir
        self.procs: list[StageProcess] = []

    def start(self) -> StageSet:
        """Start all three stages, then wait until each one's /readyz answers (or fail with its log)."""
        command = list(self.opts.command) if self.opts.command else default_command()
        env = {**os.environ, **self.opts.env, "VISIONPIPE_STREAMS__PREFIX": self.prefix}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for stage in STAGES:
                port = free_port()
                log = self.log_dir / f"{self.prefix}-{stage}.log"
                argv = [
                    *command,
                    stage,
                    "--broker",
                    self.broker_url,
                    "--device",
                    self.opts.device,
                    "--weights",
                    self.opts.weights,
                    "--port",
                    str(port),
                ]
                with open(log, "wb") as out:
                    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
                self.procs.append(StageProcess(stage, proc, port, log))
            deadline = time.monotonic() + self.opts.ready_timeout_s
            for p in self.procs:
                _wait_ready(p, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> StageSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scrape(self) -> dict[str, dict[str, float]]:
        """Sums and counts of the batch-size histograms from each stage's /metrics (empty where unreadable)."""
        return {p.stage: _batch_metrics(p.port) for p in self.procs}

    def pids(self) -> dict[str, int]:
        return {p.stage: p.proc.pid for p in self.procs}

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every stage, wait for each to drain; returns their exit codes."""
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs:
            try:
                codes[p.stage] = p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                codes[p.stage] = p.proc.wait()
        self.procs = []
        return codes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(p: StageProcess, deadline: float) -> None:
    url = f"http://127.0.0.1:{p.port}/readyz"
    while True:
        if p.proc.poll() is not None:
            raise RuntimeError(f"stage {p.stage} exited with {p.proc.returncode} before ready:\n{p.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=READY_POLL_S * 4) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage {p.stage} not ready at {url} in time:\n{p.log_tail()}")
        time.sleep(READY_POLL_S)


# Prometheus histograms the stages export (visionpipe.metrics): messages per consume call, items per device batch.
BATCH_METRICS = ("visionpipe_consumed_messages", "visionpipe_device_batch_size")


def _batch_metrics(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in BATCH_METRICS:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def batch_means(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean batch sizes per stage over the window between two scrapes."""
    out: dict[str, dict[str, float]] = {}
    for stage, end in after.items():
        start = before.get(stage, {})
        means = {}
        for metric in BATCH_METRICS:
            count = end.get(f"{metric}_count", 0.0) - start.get(f"{metric}_count", 0.0)
            total = end.get(f"{metric}_sum", 0.0) - start.get(f"{metric}_sum", 0.0)
            if count > 0:
                means[metric.removeprefix("visionpipe_")] = total / count
        out[stage] = means
    return out
