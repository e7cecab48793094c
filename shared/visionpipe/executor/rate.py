"""Arrival rate λ (requests/s), measured directly rather than inferred from batch sizes.

Two signals are combined:

* a sliding window over the last arrivals: λ = (n − 1) / (t_last − t_first),
  with the window bounded both in count (cheap at 10k req/s) and in age (so a
  rate change shows within ``max_age``). Between arrivals the estimate decays:
  if nothing came for longer than the window's mean gap, the rate is at most
  n / (now − t_first), so a load drop is seen without waiting for the next
  arrival;
* the broker backlog of the stage's input: items already waiting upstream
  will arrive as fast as we pull them, so a backlog adds ``backlog /
  BACKLOG_DRAIN_S`` to λ — the rate needed to drain it in that time.
"""

from __future__ import annotations

from collections import deque

# 64 arrivals: ±12% relative error on a Poisson rate (1/sqrt(n)), a few ms of history at 10k req/s.
WINDOW_COUNT = 64
# Half a second: long enough for 1 req/s-ish rates to register, short enough to follow seed 001's 0.3 s burst.
WINDOW_AGE_S = 0.5
# A backlog should be worked off within a second; faster would mean max batches at once on every blip.
BACKLOG_DRAIN_S = 1.0


class RateEstimator:
    """λ from arrival timestamps (ns, monotonic) plus an optional broker backlog."""

    def __init__(self, count: int = WINDOW_COUNT, max_age_s: float = WINDOW_AGE_S) -> None:
        self._times: deque[int] = deque(maxlen=max(count, 2))
        self._max_age_ns = int(max_age_s * 1e9)
        self._backlog = 0

    def arrive(self, now_ns: int, n: int = 1) -> None:
        for _ in range(n):
            self._times.append(now_ns)

    def observe_backlog(self, n: int) -> None:
        self._backlog = max(int(n), 0)

    def rate(self, now_ns: int) -> float:
        """Requests per second at ``now_ns``; 0.0 before two arrivals."""
        times = self._times
        while len(times) > 2 and now_ns - times[0] > self._max_age_ns:
            times.popleft()
        backlog_rate = self._backlog / BACKLOG_DRAIN_S
        if len(times) < 2:
            return backlog_rate
        span = times[-1] - times[0]
        n = len(times) - 1
        arrivals = n / (span * 1e-9) if span > 0 else float(n) / 1e-6
        # Decay while idle: the next arrival is at least `now - t_last` away.
        idle = now_ns - times[-1]
        if idle > 0 and span + idle > 0:
            arrivals = min(arrivals, n / ((span + idle) * 1e-9))
        return arrivals + backlog_rate
