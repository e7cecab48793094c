"""Load through the HTTP gateway (``loadgen run --target http://…``): the same schedules, over HTTP.

Open loop and free of coordinated omission: every request is sent at its scheduled time by a task of its own,
on a connection pool without a cap, so a slow answer never delays the next send, and each latency runs from the
scheduled time (monotonic) to the answer. The closed-loop pattern has N clients each sending when the last
answer came. Answers are counted by status: 200 (with the gateway's per-stage split), 429 (backpressure:
refused, not lost), 5xx and 504, and transport errors; a request with no answer at all is lost. With a deadline
(``X-Deadline-Ms``) the error codes say which 504s and 429s were the deadline's (``deadline_exceeded``,
``deadline_infeasible``), and a 200 that arrived after its deadline is counted late.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from visionpipe.breakdown import CATEGORIES
from visionpipe.loadgen.payloads import ImageSet
from visionpipe.loadgen.recorder import hist_summary, new_histogram
from visionpipe.loadgen.schedule import MAX_REQUESTS, LoadSpec, send_times

# Requests in flight beyond this are not sent but counted as client overload: a bound on the generator's memory,
# far above what one gateway holds open (a run that reaches it has measured the gateway's collapse already).
MAX_IN_FLIGHT = 20_000
CONNECT_TIMEOUT_S = 10.0
TRANSPORT_ERROR = "transport error"


@dataclass
class HttpOptions:
    timeout_ms: int | None = None  # the wait asked with ?timeout_ms= (at most the gateway's max); None: its default
    warmup_requests: int = 4
    token: str | None = None
    deadline_ms: float | None = None  # sent as X-Deadline-Ms


@dataclass
class HttpRecorder:
    mono0_ns: int
    latency: Any = field(default_factory=new_histogram)  # 200s only, µs
    answered: Any = field(default_factory=new_histogram)  # every answer, whatever its status
    latency_sum_ns: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "status code" of every error answer, e.g. "504 timeout"
    late: int = 0  # 200s that came after their deadline
    split_ms: Counter[str] = field(default_factory=Counter)  # the gateway's timings_ms, summed over 200s
    sent: int = 0
    first_ns: int | None = None
    last_ns: int | None = None

    def record(self, sched_ns: int, status: str, doc: dict[str, Any] | None, deadline_ms: float | None = None) -> None:
        now = time.monotonic_ns()
        latency_ns = now - sched_ns
        self.statuses[status] += 1
        if status != "200" and isinstance(doc, dict) and isinstance(doc.get("error"), str):
            self.errors[f"{status} {doc['error']}"] += 1
        elif status == "200" and deadline_ms is not None and latency_ns > deadline_ms * 1e6:
            self.late += 1
        self.answered.record_value(max(1, latency_ns // 1000))
        self.last_ns = now
        if status == "200":
            self.latency.record_value(max(1, latency_ns // 1000))
            self.latency_sum_ns += latency_ns
            for part, ms in ((doc or {}).get("timings_ms") or {}).items():
                self.split_ms[part] += ms

    def summary(self, duration_s: float) -> dict[str, Any]:
        ok = self.statuses["200"]
        answered = sum(self.statuses.values())
        span = max(duration_s, (self.last_ns - self.first_ns) / 1e9) if self.first_ns and self.last_ns else duration_s
        return {
            "sent": self.sent,
            "completed": ok,
            "statuses": dict(self.statuses),
            "rejected_429": self.statuses["429"],
            "server_errors_5xx": sum(n for s, n in self.statuses.items() if s.startswith("5")),
            "transport_errors": self.statuses[TRANSPORT_ERROR],
            "errors": dict(self.errors),
            "deadline_exceeded": sum(n for e, n in self.errors.items() if e.endswith(" deadline_exceeded")),
            "deadline_infeasible": sum(n for e, n in self.errors.items() if e.endswith(" deadline_infeasible")),
            "late": self.late,
            "lost": self.sent - answered,
            "throughput_rps": ok / span if span > 0 else 0.0,
            "offered_rps": self.sent / duration_s if duration_s > 0 else 0.0,
            "latency_ms": hist_summary(self.latency, self.latency_sum_ns / 1e6 / max(1, ok)),
            "all_answers_ms": hist_summary(self.answered, 0.0),
            "gateway_split_mean_ms": {c: self.split_ms[c] / ok for c in (*CATEGORIES, "total")} if ok else {},
        }


class HttpLoad:
    def __init__(self, target: str, images: ImageSet, opts: HttpOptions) -> None:
        wait = "" if opts.timeout_ms is None else f"?timeout_ms={opts.timeout_ms}"
        self.url = target.rstrip("/") + "/v1/detect" + wait
        self.images, self.opts = images, opts
        self.run_id = uuid.uuid4().hex[:8]
        self.headers = {"Content-Type": "image/jpeg"}
        if opts.deadline_ms is not None:
            self.headers["X-Deadline-Ms"] = str(round(opts.deadline_ms))
        if opts.token:
            self.headers["Authorization"] = f"Bearer {opts.token}"

    async def one(self, s: Any, rec: HttpRecorder, n: int, sched_ns: int) -> None:
        headers = {**self.headers, "X-Request-Id": f"{self.run_id}-{n}"}
        try:
            async with s.post(self.url, data=self.images.pick(n), headers=headers) as r:
                doc = await r.json(content_type=None) if r.content_type == "application/json" else None
                rec.record(sched_ns, str(r.status), doc, self.opts.deadline_ms)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            rec.record(sched_ns, TRANSPORT_ERROR, None)

    async def open_loop(self, s: Any, rec: HttpRecorder, spec: LoadSpec) -> None:
        tasks: set[asyncio.Task[None]] = set()
        for n, offset in enumerate(send_times(spec)):
            due = rec.mono0_ns + int(offset * 1e9)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            rec.sent += 1
            rec.first_ns = rec.first_ns or due
            if len(tasks) >= MAX_IN_FLIGHT:
                rec.record(due, "client overload", None)
                continue
            task = asyncio.create_task(self.one(s, rec, n, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def closed_loop(self, s: Any, rec: HttpRecorder, spec: LoadSpec) -> None:
        end = rec.mono0_ns + int(spec.duration_s * 1e9)
        counter = iter(range(MAX_REQUESTS))
        rec.first_ns = rec.mono0_ns

        async def client() -> None:
            while time.monotonic_ns() < end and (n := next(counter, None)) is not None:
                rec.sent += 1
                await self.one(s, rec, n, time.monotonic_ns())

        await asyncio.gather(*(client() for _ in range(spec.concurrency)))

    def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """What each request is sent on: here an HTTP connection pool."""
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=0)  # no client-side queue: it would hide the server's
        return aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def run(self, spec: LoadSpec) -> dict[str, Any]:
        spec.validate()
        async with self.session() as s:
            warm = HttpRecorder(time.monotonic_ns())
            await asyncio.gather(
                *(self.one(s, warm, -1 - i, time.monotonic_ns()) for i in range(self.opts.warmup_requests))
            )
            rec = HttpRecorder(time.monotonic_ns())
            with contextlib.suppress(asyncio.CancelledError):
                if spec.pattern == "closed":
                    await self.closed_loop(s, rec, spec)
                else:
                    await self.open_loop(s, rec, spec)
        out = rec.summary(spec.duration_s)
        out["warmup_statuses"] = dict(warm.statuses)
        return out


async def run_http_load(
    target: str, spec: LoadSpec, images: ImageSet, opts: HttpOptions | None = None
) -> dict[str, Any]:
    """Offer ``spec`` to the gateway at ``target``; the summary of what came back.

    ``oip+http://…`` and ``oip+grpc://…``: the same load through the gateway's Open Inference Protocol faces.
    """
    if target.startswith("oip+"):
        from visionpipe.loadgen.oip_target import oip_load

        return await oip_load(target, images, opts or HttpOptions()).run(spec)
    return await HttpLoad(target, images, opts or HttpOptions()).run(spec)
