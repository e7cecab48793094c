"""Which threads of a process actually ran over a stretch of time, against the cores it has (Linux ``/proc``).

A process that runs models on the CPU has many threads: the event loop, a decode pool, each executor's host
threads, OpenMP's and torch's own pools. What matters is how many *run* at once: more than the cores, and
they take turns (a team of OpenMP threads spinning at a barrier while one of them waits for a core is the
worst case). A :class:`ThreadCensus` reads every thread's CPU time at the start and the end (so each one's
share is exact) and, a few times a second, how many are runnable (``R``): the mean and the most.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Runnable threads are counted this often: each look reads every thread's stat file (~30 of them, holding the
# GIL for ~1 ms), so more often would cost the process it measures a visible share of a core.
SAMPLE_S = 0.25
# A thread that used at least this share of one core over the stretch counts as running.
BUSY_SHARE = 0.02
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass
class _Seen:
    name: str
    cpu_s: float


def _state(task: Path) -> str:
    """A thread's state letter (``R`` runnable), or "" once it has gone."""
    try:
        raw = (task / "stat").read_bytes()
    except OSError:
        return ""
    return chr(raw[raw.rindex(b")") + 2])


def _stat(task: Path) -> tuple[str, float] | None:
    """(state, CPU seconds) of one thread, or None once it has gone."""
    try:
        raw = (task / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ... utime is field 14
    return fields[0], (int(fields[11]) + int(fields[12])) * TICK_S


def _kind(name: str) -> str:
    """A thread's kind from its name: ``vp-launch_0`` and ``vp-launch_1`` are both ``vp-launch``."""
    return re.sub(r"[_-]?\d+$", "", name) or name


class ThreadCensus:
    """Threads of process ``pid`` (default: this one) over the time between :meth:`start` and :meth:`stop`."""

    def __init__(self, pid: int | None = None) -> None:
        self.root = Path(f"/proc/{pid or 'self'}/task")
        self.own = pid is None or pid == os.getpid()
        self._start: dict[str, _Seen] = {}
        self._t0 = 0.0
        self._runnable: list[int] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _names(self) -> dict[str, str]:
        if not self.own:
            return {}
        return {str(t.native_id): _kind(t.name) for t in threading.enumerate() if t.native_id is not None}

    def _read(self) -> dict[str, _Seen]:
        names = self._names()
        out = {}
        with contextlib.suppress(OSError):
            for task in self.root.iterdir():
                stat = _stat(task)
                if stat is not None:
                    out[task.name] = _Seen(names.get(task.name, "native (OpenMP, torch, libraries)"), stat[1])
        return out

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with contextlib.suppress(OSError):
                runnable = sum(_state(task) == "R" for task in self.root.iterdir())
                self._runnable.append(max(0, runnable - self.own))  # not this sampler, which is running to look

    def start(self) -> ThreadCensus:
        if not self.root.is_dir():
            return self
        self._start, self._t0 = self._read(), time.monotonic()
        self._sampler = threading.Thread(target=self._sample, name="vp-census", daemon=True)
        self._sampler.start()
        return self

    def stop(self, cores: int) -> dict[str, Any]:
        """The census: threads that ran, by kind, with their share of one core; runnable threads, mean and most."""
        if self._sampler is None:
            return {}
        self._stop.set()
        self._sampler.join()
        wall = max(time.monotonic() - self._t0, 1e-9)
        end = self._read()
        kinds: dict[str, dict[str, float]] = {}
        for tid, seen in end.items():
            used = seen.cpu_s - (self._start[tid].cpu_s if tid in self._start else 0.0)
            kind = kinds.setdefault(seen.name, {"threads": 0, "running": 0, "core_share": 0.0})
            kind["threads"] += 1
            kind["running"] += used / wall >= BUSY_SHARE
            kind["core_share"] += used / wall
        for kind in kinds.values():
            kind["core_share"] = round(kind["core_share"], 3)
        samples = self._runnable or [0]
        return {
            "cores": cores,
            "threads": len(end),
            "running": int(sum(k["running"] for k in kinds.values())),
            "cores_used": round(sum(k["core_share"] for k in kinds.values()), 3),
            "runnable_mean": round(sum(samples) / len(samples), 2),
            "runnable_max": max(samples),
            "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["core_share"])),
        }
