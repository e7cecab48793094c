"""CPU and memory of the broker and stage processes during a run, where the OS lets us see them.

A broker comparison that reports only latency hides half the cost: an
in-memory broker may win on latency and lose on RAM. When the broker runs on
this host (loopback URL) its process is found by the port it listens on; a
remote broker, or one we may not inspect, is reported as "not measurable"
rather than guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil

SAMPLE_S = 0.5  # often enough to catch a memory peak of a seconds-long run, rare enough to cost nothing
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "kafka": 9092}


def broker_process(url: str) -> psutil.Process | None:
    """The local process listening on the broker URL's (first) port, or None when it is not ours to see."""
    parts = urlsplit(url)
    first = parts.netloc.split(",")[0].rsplit("@", 1)[-1]
    host, _, port_text = first.rpartition(":")
    host = host.strip("[]") or first
    if host not in LOCAL_HOSTS:
        return None
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS.get(parts.scheme, 0)
        conns = psutil.net_connections(kind="tcp")
    except (ValueError, psutil.Error, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            with contextlib.suppress(psutil.Error):
                return psutil.Process(c.pid)
    return None


KAFKA_JAR = re.compile(r"kafka_2\.\d+-([\w.\-]+?)\.jar")


@functools.lru_cache(maxsize=64)
def identify_broker(url: str) -> tuple[str, str]:
    """(label, what it is) for a broker URL: the label a report uses, and the server behind it where we can see it.

    Apache Kafka and Tansu both speak the Kafka protocol behind a ``kafka://`` URL; a comparison must say which it
    measured. A URL's ``#fragment`` names it outright; else a local server is known by its process (the
    ``kafka.Kafka`` main class and the version of its jar, or Tansu's binary); a remote one is named by its scheme.
    Remembered per URL, so the report written after the run still names what ran.
    """
    parts = urlsplit(url)
    scheme = parts.scheme or url
    proc = broker_process(url)
    what, label = f"{scheme}, not identified (not a local process)", scheme
    with contextlib.suppress(psutil.Error):
        if proc is not None:
            cmd = " ".join(proc.cmdline())
            jar = KAFKA_JAR.search(cmd) or KAFKA_JAR.search(" ".join(_classpath_jars(cmd)))
            if "kafka.Kafka" in cmd:
                label, what = "apache-kafka", f"Apache Kafka {jar.group(1) if jar else '(version unknown)'}"
            elif "tansu" in proc.name():
                label, what = "tansu", "Tansu (a Kafka-protocol broker, not Apache Kafka)"
            elif "redis" in proc.name():
                label, what = scheme, f"Redis ({proc.name()})"
            else:
                what = f"{scheme} served by {proc.name()}"
    return (parts.fragment or label), what


def _classpath_jars(cmd: str) -> list[str]:
    """Jar names in the folders of a JVM command line's ``-cp dir/*`` entries (the broker's own jars)."""
    from pathlib import Path

    out = []
    for entry in re.findall(r"(\S+)/\*", cmd):
        with contextlib.suppress(OSError):
            out += [p.name for p in Path(entry).glob("kafka_2.*.jar")]
    return out


@dataclass
class _Track:
    proc: psutil.Process
    cpu0: float
    rss_max: int = 0
    rss_sum: int = 0
    samples: int = 0


@dataclass
class ResourceSampler:
    """Samples named processes in the background; ``stop()`` returns CPU % (of one core) and RSS."""

    procs: dict[str, psutil.Process]
    tracks: dict[str, _Track] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    t0: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)

    async def __aenter__(self) -> ResourceSampler:
        self.t0 = time.monotonic()
        for name, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                self.tracks[name] = _Track(proc, times.user + times.system)
        self._sample()
        self.task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.result = self.finish()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            self._sample()

    def _sample(self) -> None:
        for track in self.tracks.values():
            with contextlib.suppress(psutil.Error):
                rss = track.proc.memory_info().rss
                track.rss_max = max(track.rss_max, rss)
                track.rss_sum += rss
                track.samples += 1

    def finish(self) -> dict[str, Any]:
        """Per process: mean CPU % over the window (100 = one core busy), peak and mean RSS in MB."""
        self._sample()
        wall = max(1e-9, time.monotonic() - self.t0)
        out: dict[str, Any] = {}
        for name in self.procs:
            track = self.tracks.get(name)
            if track is None:
                out[name] = None
                continue
            try:
                times = track.proc.cpu_times()
                cpu = 100.0 * (times.user + times.system - track.cpu0) / wall
            except psutil.Error:
                cpu = None
            out[name] = {
                "pid": track.proc.pid,
                "cpu_percent": cpu,
                "rss_max_mb": track.rss_max / 2**20,
                "rss_mean_mb": track.rss_sum / max(1, track.samples) / 2**20,
            }
        return out
