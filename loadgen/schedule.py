"""Arrival patterns: when each request is due, fixed before the first one is sent.

Open-loop load generators must decide send times in advance and keep them
even when the system under test falls behind; otherwise a slow response
delays the next request and the measured latency hides the queue that a real
client population would have built (coordinated omission). So an open-loop
schedule here is a plain list of offsets in seconds from the start of the
run, computed once; the runner measures every latency from its scheduled
time. The closed-loop pattern has no schedule: N workers each send the next
request when the previous one returns, which is the right model for a fixed
pool of clients and deliberately the wrong one for capacity planning.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

Pattern = Literal["constant", "poisson", "burst", "ramp", "closed"]
PATTERNS: tuple[Pattern, ...] = ("constant", "poisson", "burst", "ramp", "closed")
OPEN_LOOP: tuple[Pattern, ...] = ("constant", "poisson", "burst", "ramp")

# A hard ceiling on requests per run, so that a typo in --rate or --duration cannot
# turn the load generator into an unbounded flood (1e6 is ~3 h at 100 req/s).
MAX_REQUESTS = 1_000_000
# Bursts repeat once per this period; one second matches how people read rate plots.
BURST_PERIOD_S = 1.0


class ScheduleError(ValueError):
    """The requested load cannot be scheduled (bad numbers or too many requests)."""


@dataclass(frozen=True)
class LoadSpec:
    """The load to offer: pattern, rate (requests/s), duration and pattern options.

    ``rate`` is the steady rate for constant/poisson, the base rate for burst
    (each period starts with ``burst_ms`` at ``rate × burst_factor``), and the
    final rate for ramp (linear from zero over the duration).
    """

    pattern: Pattern = "constant"
    rate: float = 10.0
    duration_s: float = 10.0
    burst_factor: float = 2.0
    burst_ms: float = 300.0
    concurrency: int = 4
    seed: int = 0

    def validate(self) -> None:
        if self.pattern not in PATTERNS:
            raise ScheduleError(f"unknown pattern {self.pattern!r}; use one of {', '.join(PATTERNS)}")
        if not self.duration_s > 0 or not math.isfinite(self.duration_s):
            raise ScheduleError(f"duration must be a positive number of seconds, got {self.duration_s}")
        if self.pattern == "closed":
            if self.concurrency < 1:
                raise ScheduleError(f"closed loop needs --concurrency >= 1, got {self.concurrency}")
            return
        if not self.rate > 0 or not math.isfinite(self.rate):
            raise ScheduleError(f"rate must be a positive number of requests/s, got {self.rate}")
        if self.pattern == "burst" and (self.burst_factor < 1 or not 0 < self.burst_ms <= BURST_PERIOD_S * 1000):
            raise ScheduleError("burst needs --burst-factor >= 1 and 0 < --burst-ms <= 1000")
        if self.expected_requests() > MAX_REQUESTS:
            raise ScheduleError(f"{self.expected_requests():.0f} requests exceed the limit of {MAX_REQUESTS} per run")

    def expected_requests(self) -> float:
        """Mean number of requests the schedule will hold (open loop only)."""
        if self.pattern == "ramp":
            return self.rate * self.duration_s / 2
        if self.pattern == "burst":
            burst_share = self.burst_ms / 1000 / BURST_PERIOD_S
            return self.rate * self.duration_s * (1 + burst_share * (self.burst_factor - 1))
        return self.rate * self.duration_s

    def describe(self) -> str:
        if self.pattern == "closed":
            return f"closed loop, {self.concurrency} in flight, {self.duration_s:g} s"
        extra = f", ×{self.burst_factor:g} for {self.burst_ms:g} ms each second" if self.pattern == "burst" else ""
        return f"{self.pattern} {self.rate:g} req/s{extra}, {self.duration_s:g} s"


def send_times(spec: LoadSpec) -> list[float]:
    """Offsets (seconds from the run's start) at which requests are due, ascending."""
    spec.validate()
    if spec.pattern == "closed":
        raise ScheduleError("a closed loop has no schedule; its workers send when replies arrive")
    if spec.pattern == "constant":
        return _constant(spec.rate, spec.duration_s)
    if spec.pattern == "poisson":
        return _poisson(spec.rate, spec.duration_s, random.Random(spec.seed))
    if spec.pattern == "burst":
        return _burst(spec)
    return _ramp(spec.rate, spec.duration_s)


def _constant(rate: float, duration_s: float) -> list[float]:
    n = math.ceil(rate * duration_s - 1e-9)
    return [k / rate for k in range(n)]


def _poisson(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    # Exponential gaps give a Poisson process: the burstiness of many independent clients.
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _burst(spec: LoadSpec) -> list[float]:
    # Piecewise-constant rate; stepping by 1/rate(t) keeps the spacing even within each phase.
    burst_s = spec.burst_ms / 1000
    out: list[float] = []
    t = 0.0
    while t < spec.duration_s:
        out.append(t)
        in_burst = (t % BURST_PERIOD_S) < burst_s
        t += 1 / (spec.rate * spec.burst_factor if in_burst else spec.rate)
    return out


def _ramp(rate: float, duration_s: float) -> list[float]:
    # Rate rises linearly 0 → rate, so the k-th request is due where the integral of the rate reaches k:
    # rate·t²/(2·duration) = k  ⇒  t = sqrt(2·duration·k / rate).
    n = math.floor(rate * duration_s / 2)
    return [math.sqrt(2 * duration_s * k / rate) for k in range(n)]
