"""The pipeline as separate processes: ``visionpipe serve`` decode, detector and classifier over one local redis-server.

The images go in and the results come back through ``visionpipe run --stages-elsewhere`` (a client: ingress and
collector only), so the figures are the same as the embedded case's (images/s from the first submission to
the last result, start-up left out); the stages are warmed up by a few images first. Beside them: the CPU each
process used over the measured run, the threads each ran (:class:`~visionpipe.threads.ThreadCensus` from
outside), the bytes each hop carried (the stages' ``visionpipe_published_bytes`` counters; frames are the JPEG
files), and what a message of each hop's size costs on the same redis-server, encoded, published, consumed,
decoded and acked (client and server CPU).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from visionpipe.broker import connect
from visionpipe.envelope import Envelope
from visionpipe.loadgen.stages import StageOptions, StageSet, free_port
from visionpipe.settings import load_settings
from visionpipe.threads import ThreadCensus
from visionpipe.topology import STAGES

BIN = Path(sys.executable).parent
PREFIX = "bench"
WARM_IMAGES = 8
# Messages per hop size in the cost probe: enough for a steady CPU figure, few enough for 1.2 MB messages.
PROBE_MESSAGES = 40
OUTPUT_HOP = {"decode": "tensors", "detector": "crops", "classifier": "results"}
CORES = len(os.sched_getaffinity(0))


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, psutil.Process]]:
    """A redis-server on a free loopback port, no persistence; its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found; `make sysdeps` installs it")
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def _cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _published_bytes(port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "visionpipe_published_bytes"
        for s in family.samples
        if s.name.endswith("_total")
    )


def _client(url: str, photos: list[Path], env: dict[str, str], scratch: Path, summary: Path | None) -> None:
    argv = [str(BIN / "visionpipe"), "run", *map(str, photos), "--broker", url, "--stages-elsewhere", "--quiet"]
    argv += ["--out", str(scratch / "services.jsonl")]
    if summary is not None:
        argv += ["--summary-json", str(summary)]
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def services_case(photos: list[Path], extra_env: dict[str, str], scratch: Path) -> dict[str, Any]:
    """One run of the three stages as services over Redis; the summary as the other cases have it, and more."""
    env = {**os.environ, "VISIONPIPE_SERVICE__DEVICE": "cpu", "VISIONPIPE_STREAMS__PREFIX": PREFIX, **extra_env}
    out = scratch / "services.json"
    with redis_server(scratch) as (url, redis):
        opts = StageOptions(device="cpu", weights="DEFAULT", env={**extra_env, "VISIONPIPE_SERVICE__DEVICE": "cpu"})
        stages = StageSet(url, PREFIX, opts, scratch / "logs").start()
        try:
            _client(url, photos[:WARM_IMAGES], env, scratch, None)  # first batches, instance plans, caches
            procs = {p.stage: psutil.Process(p.proc.pid) for p in stages.procs}
            ports = {p.stage: p.port for p in stages.procs}
            cpu0 = {s: _cpu_s(p) for s, p in procs.items()} | {"redis-server": _cpu_s(redis)}
            bytes0 = {s: _published_bytes(ports[s]) for s in STAGES}
            censuses = {s: ThreadCensus(p.pid).start() for s, p in procs.items()}
            load = os.getloadavg()[0]
            _client(url, photos, env, scratch, out)
            threads = {s: c.stop(CORES) for s, c in censuses.items()}
            cpu = {s: _cpu_s(p) - cpu0[s] for s, p in procs.items()} | {
                "redis-server": _cpu_s(redis) - cpu0["redis-server"]
            }
            wire = {OUTPUT_HOP[s]: (_published_bytes(ports[s]) - bytes0[s]) / len(photos) for s in STAGES}
        finally:
            stages.stop()
        doc = json.loads(out.read_text())
        wire = {"frames": sum(p.stat().st_size for p in photos) / len(photos), **wire}
        costs = asyncio.run(hop_costs(url, redis, wire))
    return _summarise(doc, load, cpu, threads, wire, costs)


def _summarise(
    doc: dict[str, Any],
    load: float,
    cpu: dict[str, float],
    threads: dict[str, dict[str, Any]],
    wire: dict[str, float],
    costs: dict[str, float],
) -> dict[str, Any]:
    ok, elapsed = doc["ok"], doc["elapsed_s"]
    client_ms = doc["cpu_ms_per_image"] or 0.0
    cores = CORES
    return {
        "load1_before": round(load, 2),
        "images_per_s": doc["images_per_s"],
        "cpu_ms_per_image": round(client_ms + sum(cpu.values()) / ok * 1e3, 1),
        "cpu_ms_per_image_by_process": {"client": client_ms, **{k: round(v / ok * 1e3, 1) for k, v in cpu.items()}},
        "busy_share": {k: round(v / (elapsed * cores), 3) for k, v in cpu.items()},
        "latency_ms": doc["latency_ms"],
        "threads": {
            "running": sum(t.get("running", 0) for t in threads.values()),
            "threads": sum(t.get("threads", 0) for t in threads.values()),
            "runnable_mean": round(sum(t.get("runnable_mean", 0) for t in threads.values()), 2),
            "by_process": threads,
        },
        "wire_bytes_per_image": {k: round(v) for k, v in wire.items()},
        "hop_cpu_ms_per_image": costs,
    }


async def hop_costs(url: str, redis: psutil.Process, wire: dict[str, float]) -> dict[str, float]:
    """CPU ms (this client's and the server's) to encode, publish, consume, decode and ack each hop's bytes.

    Each hop is probed with an envelope carrying an array of that hop's mean size per image, so the figure is
    what one image costs on that hop (a hop with several crops per image carries them in one message too).
    """
    broker = await connect(url, load_settings(broker={"url": url}))
    out: dict[str, float] = {}
    try:
        for hop, size in wire.items():
            stream = f"probe.{hop}"
            await broker.ensure(stream, "g")
            env = Envelope("probe", arrays={"a": np.zeros(max(1, int(size)), dtype=np.uint8)})
            cpu0, server0 = time.process_time(), _cpu_s(redis)
            for _ in range(PROBE_MESSAGES):
                await broker.publish(stream, [env.encode()])
                got = await broker.consume(stream, "g", "probe", 1, 1.0)
                for d in got:
                    Envelope.decode(d.data)
                await broker.ack(stream, "g", got)
            spent = time.process_time() - cpu0 + _cpu_s(redis) - server0
            out[hop] = round(spent / PROBE_MESSAGES * 1e3, 3)
            await broker.delete(stream)
    finally:
        await broker.close()
    return out
