"""The naive baseline of the broker hop benchmark: what a user would write with redis-py by hand.

Raw redis-py, sync client, one ``XADD`` per message in a producer thread and
``XREADGROUP COUNT 1`` + ``XACK`` one at a time in a consumer thread, against
the same server as the layer's rows (credentials from the URL only), at the
same sizes and rates, in the same run.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from hdrh.histogram import HdrHistogram

from visionpipe.broker.security import redact_url
from visionpipe.loadgen.bench.broker_hop import (
    DRAIN_STALL_S,
    GROUP,
    HIST_MAX_US,
    RAW,
    SATURATION_WINDOW,
    STAMP,
    WARMUP_S,
    HopResult,
    hop_result,
)


class _RawLoop:
    """The naive baseline: raw sync redis-py, one XADD per message, XREADGROUP COUNT 1 + XACK one at a time.

    Same schedule, window, stamp and entry layout (field ``d``) as :func:`hop`, with a producer thread
    and a consumer thread, each with its own connection. No trimming: the stream is deleted afterwards.
    """

    def __init__(self, url: str, size: int, rate: float, duration_s: float) -> None:
        import redis

        self.url, self.size, self.rate, self.duration_s = url, size, rate, duration_s
        self.stream = f"bench.raw.{uuid.uuid4().hex[:8]}"
        self.producer_r, self.consumer_r = redis.Redis.from_url(url), redis.Redis.from_url(url)
        self.filler = bytes(max(0, size - STAMP.size))
        self.hist = HdrHistogram(1, HIST_MAX_US, 3)
        self.sent = self.received = 0
        self.producer_done, self.room, self.failed = threading.Event(), threading.Event(), threading.Event()
        self.room.set()
        self.errors: list[BaseException] = []

    def read_one(self, block_ms: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = self.consumer_r.xreadgroup(GROUP, "raw", {self.stream: ">"}, count=1, block=block_ms)
        return [e for _name, entries in reply or [] for e in entries]

    def produce(self) -> None:
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < self.duration_s and not self.failed.is_set():
            if self.rate > 0:
                delay = t0 + i / self.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            elif not self.room.wait(0.1):
                continue
            self.producer_r.xadd(self.stream, {"d": STAMP.pack(time.perf_counter_ns()) + self.filler})
            self.sent += 1
            i += 1
            if self.rate <= 0 and self.sent - self.received >= SATURATION_WINDOW:
                self.room.clear()

    def consume(self) -> None:
        last = time.monotonic()
        while not (self.producer_done.is_set() and self.received >= self.sent) and not self.failed.is_set():
            for entry_id, fields in self.read_one(50):
                now = time.perf_counter_ns()
                self.hist.record_value(max(1, (now - STAMP.unpack_from(fields[b"d"])[0]) // 1000))
                self.consumer_r.xack(self.stream, GROUP, entry_id)
                self.received += 1
                last = time.monotonic()
            if self.producer_done.is_set() and time.monotonic() - last > DRAIN_STALL_S:
                raise RuntimeError(f"{self.sent - self.received} messages never came back")
            if self.sent - self.received < SATURATION_WINDOW // 2:
                self.room.set()

    def _guarded(self, fn: Callable[[], None], done: threading.Event | None = None) -> None:
        try:
            fn()
        except BaseException as exc:
            self.errors.append(exc)
            self.failed.set()
        finally:
            if done is not None:
                done.set()

    def run(self) -> HopResult:
        try:
            self.producer_r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            self.producer_r.xadd(self.stream, {"d": STAMP.pack(0)})  # warm-up round, as hop() does
            self.consumer_r.xack(self.stream, GROUP, *[i for i, _ in self.read_one(int(WARMUP_S * 1000))])
            threads = [
                threading.Thread(target=self._guarded, args=(self.produce, self.producer_done), name="raw-producer"),
                threading.Thread(target=self._guarded, args=(self.consume,), name="raw-consumer"),
            ]
            t0, cpu0 = time.perf_counter(), time.process_time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
            if self.errors:
                raise self.errors[0]
        finally:
            self.producer_r.delete(self.stream)
            self.producer_r.close()
            self.consumer_r.close()
        host = redact_url(self.url).split("?")[0].split(":", 1)[1]
        return hop_result(f"{RAW}:{host}", self.size, self.rate, 1, self.sent, self.received, seconds, cpu_s, self.hist)


def raw_redis_hop(url: str, size: int, rate: float, duration_s: float) -> HopResult:
    """One point of the naive raw redis-py loop (see :class:`_RawLoop`), blocking."""
    return _RawLoop(url, size, rate, duration_s).run()
