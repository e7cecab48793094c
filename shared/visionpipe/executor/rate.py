"""Arrival rate λ (requests/s), measured directly rather than inferred from batch sizes.

Two signals are combined:

* a sliding window over the last arrivals, kept as *groups*: requests that
  reach the executor within ``GROUP_NS`` of a group's first one join it. A
  stage submits a whole consumed batch (every image, or every crop of every
  message) in one pass of the event loop, so without groups n arrivals a few
  µs apart would read as n per µs. λ = (arrivals after the first group) /
  (t_last − t_first): smoothed over consumes, and exact for one-at-a-time
  arrivals. The window is bounded in arrivals (cheap at 10k req/s; never fewer
  than ``MIN_GROUPS`` groups, so a few big consumes still give a rate) and in
  age (so a rate change shows within ``max_age``). Between arrivals the
  estimate decays: if nothing came since, the rate is at most
  arrivals / (now − t_first), so a load drop is seen without waiting for the
  next arrival;
* the broker backlog of the stage's input, in requests (the stage converts
  messages to requests): items already waiting upstream will arrive as fast
  as we pull them, so a backlog adds ``backlog / BACKLOG_DRAIN_S`` to λ — the
  rate needed to drain it in that time.
"""

from __future__ import annotations

from collections import deque

# 64 arrivals: ±12% relative error on a Poisson rate (1/sqrt(n)), a few ms of history at 10k req/s.
WINDOW_COUNT = 64
# Half a second: long enough for 1 req/s-ish rates to register, short enough to follow a 0.3 s burst.
WINDOW_AGE_S = 0.5
# A backlog should be worked off within a second; faster would mean max batches at once on every blip.
BACKLOG_DRAIN_S = 1.0
# One consume's submits arrive within one event-loop pass (µs to ~100 µs apart); 0.2 ms merges them, while
# one-at-a-time arrivals below 5k/s still mostly form groups of their own. Grouping never biases λ (arrivals are
# counted, not groups), it only coarsens the clock.
GROUP_NS = 200_000
# At least this many groups stay in the window, so four consumes of 64 crops each still give a rate.
MIN_GROUPS = 4


class RateEstimator:
    """λ from arrival timestamps (ns, monotonic) plus an optional broker backlog (requests)."""

    def __init__(self, count: int = WINDOW_COUNT, max_age_s: float = WINDOW_AGE_S, group_ns: int = GROUP_NS) -> None:
        self._groups: deque[list[int]] = deque()  # [first arrival ns, requests]
        self._total = 0
        self._count = max(count, 2)
        self._max_age_ns = int(max_age_s * 1e9)
        self._group_ns = group_ns
        self._backlog = 0

    def arrive(self, now_ns: int, n: int = 1) -> None:
        groups = self._groups
        if groups and now_ns - groups[-1][0] <= self._group_ns:
            groups[-1][1] += n
        else:
            groups.append([now_ns, n])
        self._total += n
        while len(groups) > MIN_GROUPS and self._total - groups[0][1] - groups[1][1] >= self._count:
            self._total -= groups.popleft()[1]

    def observe_backlog(self, n: int) -> None:
        self._backlog = max(int(n), 0)

    def rate(self, now_ns: int) -> float:
        """Requests per second at ``now_ns``; the backlog term alone before two groups of arrivals."""
        groups = self._groups
        while len(groups) > 2 and now_ns - groups[0][0] > self._max_age_ns:
            self._total -= groups.popleft()[1]
        backlog_rate = self._backlog / BACKLOG_DRAIN_S
        if len(groups) < 2:
            return backlog_rate
        after_first = self._total - groups[0][1]
        # Decay while idle: the next arrival is at least `now - t_last` away.
        span = max(groups[-1][0], now_ns) - groups[0][0]
        return after_first / (span * 1e-9) + backlog_rate
