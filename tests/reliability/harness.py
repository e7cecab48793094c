"""Stage processes, probes and a de-duplicating sink for the fault-injection tests.

Every reliability test drives the real ``visionpipe serve`` processes over a
real broker and judges them only from outside: their exit codes, their
``/readyz`` answers, what lies in the streams and in each group's pending
list. Nothing here mocks a broker or reaches into a stage's memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.servers import free_port
from tests.services.helpers import env_for, fast_overrides
from visionpipe import topology
from visionpipe.broker import Broker, DeadLetter
from visionpipe.collector import Collected, Collector
from visionpipe.envelope import Envelope, EnvelopeError
from visionpipe.samples import scene_jpeg
from visionpipe.settings import Settings, load_settings
from visionpipe.topology import STAGES

VISIONPIPE = str(Path(sys.executable).parent / "visionpipe")  # the console script the package installs
# On a stage's PYTHONPATH, this folder's sitecustomize makes a message whose request id starts KILL-ME SIGKILL it,
# and can swap the models for stand-ins (inject/sitecustomize.py).
INJECT = Path(__file__).with_name("inject")
KILL_MARK = "KILL-ME"
STANDIN_ENV = {"PYTHONPATH": str(INJECT), "RELIABILITY_STANDIN_STAGES": "1"}
# A stage imports torch, builds its model and warms the executor up: seconds alone, far more on 2 busy cores.
READY_TIMEOUT_S = 90.0
PROBE_TIMEOUT_S = 2.0
POLL_S = 0.1
# A delivery idle this long at a consumer is presumed dead and taken over. Long enough that a live detector
# batch on 2 shared cores is not stolen (a steal is harmless, only a duplicate), short enough to keep tests quick.
RECLAIM_IDLE_S = 6.0
# Retries before a delivery is dead-lettered: kills in these tests hit a delivery at most twice.
MAX_RETRIES = 4
SINK_GROUP = "reliability-sink"


def reliability_overrides(ns: str, url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """The stage tests' light models and small images, with quick reclaim; ``sections`` merge on top."""
    o = fast_overrides(ns, url)
    o["broker"].update({"reclaim_idle_s": RECLAIM_IDLE_S, "connect_retries": 3, "connect_backoff_s": 0.1})
    o["limits"] = {**o["limits"], "max_retries": MAX_RETRIES}
    o["service"].update({"reclaim_interval_s": 1.0, "drain_grace_s": 20.0})
    for name, values in sections.items():
        o[name] = {**o.get(name, {}), **values}
    return o


def settings_of(overrides: dict[str, Any]) -> Settings:
    return load_settings(**overrides)


def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=PROBE_TIMEOUT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, TimeoutError):
        return 0, b""


@dataclass
class StageProc:
    """One ``visionpipe serve STAGE`` subprocess with its own health port, consumer name and log file."""

    stage: str
    env: dict[str, str]
    logdir: Path
    drain: bool = False
    port: int = field(default_factory=free_port)
    consumer: str = field(default_factory=lambda: f"rel-{uuid.uuid4().hex[:6]}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.logdir / f"{self.stage}-{self.consumer}.log"

    @property
    def member(self) -> str:
        """The consumer name the worker uses in its group."""
        return f"{self.consumer}-{self.stage}"

    def start(self) -> StageProc:
        argv = [VISIONPIPE, "serve", self.stage, "--device", "cpu", "--port", str(self.port)]
        if self.drain:
            argv.append("--drain")
        # Fault handler on: a process that hangs is sent SIGABRT and leaves every thread's stack in its log.
        env = {**os.environ, **self.env, "VISIONPIPE_SERVICE__CONSUMER": self.consumer, "PYTHONFAULTHANDLER": "1"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> StageProc:
        """Start again under the same consumer name, as an orchestrator restarts a pod: its old deliveries are its."""
        self.stop()
        return self.start()

    def readyz(self, host: str = "127.0.0.1") -> tuple[bool, dict[str, Any]]:
        status, body = http_get(self.port, "/readyz", host)
        if status == 0:
            return False, {}
        doc = json.loads(body)
        return status == 200 and bool(doc.get("ready")), doc

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, host: str = "127.0.0.1") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.stage} exited before ready:\n{self.log_tail()}")
            if self.readyz(host)[0]:
                return
            time.sleep(POLL_S)
        raise AssertionError(f"{self.stage} not ready after {timeout_s}s:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """The exit code; a process still running after ``timeout_s`` is aborted and the test fails with its stacks."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=10)
            raise AssertionError(f"{self.stage} still running after {timeout_s}s:\n{self.log_tail(12000)}") from None

    def stop(self) -> None:
        """Finalizer: SIGKILL whatever still runs, so no test leaves a process behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"


class Processes:
    """Stage processes of one test or module; ``close`` kills any still running."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = env, logdir
        self.procs: list[StageProc] = []

    def start(
        self, stage: str, *, drain: bool = False, env: dict[str, str] | None = None, killable: bool = False
    ) -> StageProc:
        """``killable``: a message whose request id starts with KILL_MARK SIGKILLs the process (see killer/)."""
        extra = {"PYTHONPATH": str(INJECT)} if killable else {}
        p = StageProc(stage, {**self.env, **(env or {}), **extra}, self.logdir, drain=drain).start()
        self.procs.append(p)
        return p

    def pipeline(self) -> list[StageProc]:
        """One process per stage, started together (their start-up overlaps), returned once all are ready."""
        procs = [self.start(stage) for stage in STAGES]
        for p in procs:
            p.wait_ready()
        return procs

    def assert_alive(self) -> None:
        for p in self.procs:
            if p.proc is not None and p.proc.returncode is None:
                assert p.alive(), f"{p.stage} died (rc {p.proc.poll()}):\n{p.log_tail()}"

    def close(self) -> None:
        for p in self.procs:
            p.stop()


def stage_env(overrides: dict[str, Any]) -> dict[str, str]:
    return env_for(overrides)


def frames(n: int, seed: int = 0) -> list[bytes]:
    """``n`` small distinct JPEGs (small: these tests are about delivery, not decode speed)."""
    return [scene_jpeg(160 + 8 * (i % 5), 120, seed=seed * 10_000 + i) for i in range(n)]


class Sink:
    """Reads the results stream in its own group and keeps one result per request id.

    At-least-once delivery means a redelivered request may be published twice;
    this is the de-duplication the issue puts at the sink, counted so the tests
    can report it.
    """

    def __init__(self, broker: Broker, settings: Settings, stream: str = "results") -> None:
        self.collector = Collector(broker, settings, SINK_GROUP, "sink", stream=stream)
        self.results: dict[str, Envelope] = {}
        self.seen: Counter[str] = Counter()
        self.dead: list[DeadLetter] = []

    async def open(self) -> Sink:
        await self.collector.open()
        return self

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seen.values())

    async def poll(self, timeout_s: float = 0.2) -> None:
        await self.collector.poll(timeout_s, self._keep)

    def _keep(self, batch: Collected) -> None:
        for env in batch.results:
            self.seen[env.request_id] += 1
            self.results.setdefault(env.request_id, env)
        self.dead += batch.dead

    async def until(self, done: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
        """Poll until ``done()`` holds; fail with ``what()`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.poll()
            if done():
                return
        raise AssertionError(f"after {timeout_s}s: {what()}")

    async def results_for(self, want: set[str], timeout_s: float) -> None:
        def missing() -> str:
            return f"{len(want - self.results.keys())} of {len(want)} results missing"

        await self.until(lambda: want <= self.results.keys(), timeout_s, missing)


async def settle_backlogs(broker: Broker, settings: Settings, timeout_s: float) -> int:
    """Wait until no stage group has pending or undelivered messages; returns the final total."""
    deadline = time.monotonic() + timeout_s
    total = -1
    while time.monotonic() < deadline:
        total = 0
        for stage in STAGES:
            total += (await broker.backlog(topology.input_stream(stage, settings), stage)).total
        if total == 0:
            return 0
        await asyncio.sleep(0.2)
    return total


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def pending_by_consumer(client: redis.Redis, stream: str, group: str) -> dict[str, int]:
    """Redis XPENDING summary: how many deliveries each member of ``group`` holds unacked."""
    try:
        summary: Any = client.xpending(stream, group)
    except redis.exceptions.ResponseError:
        return {}
    return {_s(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}


def request_id_of(data: bytes) -> str | None:
    try:
        return Envelope.decode(data).request_id
    except EnvelopeError:
        return None


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def raw_counts(client: redis.Redis, stream: str) -> Counter[str]:
    """Request ids of every entry the stream holds, as many times as they occur: no de-duplication."""
    out: Counter[str] = Counter()
    last = "-"
    while True:
        entries: Any = client.xrange(stream, last, "+", count=1000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            return out
        for _eid, fields in entries:
            out[request_id_of(fields[b"d"]) or "?"] += 1
        last = entries[-1][0].decode()


def dead_counts(client: redis.Redis, stream: str) -> dict[str, list[str]]:
    """Request id -> the reasons of every dead letter the stream holds for it."""
    out: dict[str, list[str]] = {}
    for _eid, fields in client.xrange(stream):
        record = DeadLetter.decode(fields[b"d"])
        out.setdefault(record.request_id or "?", []).append(record.reason)
    return out


AUDIT_GROUP = "reliability-audit"


def pin(client: redis.Redis, stream: str) -> None:
    """A group that never reads ``stream``: acks by others may then trim nothing, so it keeps every entry."""
    try:
        client.xgroup_create(stream, AUDIT_GROUP, id="$", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
