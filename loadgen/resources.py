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
