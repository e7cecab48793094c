"""Open-loop arrival traces (monotonic ns from 0), the same for every policy compared.

Non-homogeneous traces (burst, ramp) are drawn by thinning a Poisson process
at the peak rate, so every trace is a true Poisson process with the given
rate over time and a seed reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NS = 1_000_000_000
# The asynchronous-transfer scheduling paper's burst (docs/background.md): the load doubles for 0.3 s.
BURST_FACTOR = 2.0
BURST_LENGTH_S = 0.3


@dataclass(frozen=True)
class Trace:
    name: str
    rate: float  # nominal (base) requests/s
    arrivals_ns: np.ndarray
    rate_at: Callable[[float], float]  # seconds -> requests/s, for plots
    window_s: tuple[float, float] | None = None  # where the interesting part is (burst)


def _thinned(rate_at: Callable[[np.ndarray], np.ndarray], peak: float, duration_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = rng.poisson(peak * duration_s)
    t = np.sort(rng.uniform(0.0, duration_s, n))
    keep = rng.uniform(0.0, peak, n) < rate_at(t)
    return (t[keep] * NS).astype(np.int64)


def poisson(rate: float, duration_s: float, seed: int = 0) -> Trace:
    arrivals = _thinned(lambda t: np.full_like(t, rate), rate, duration_s, seed)
    return Trace("poisson", rate, arrivals, lambda _t: rate)


def burst(rate: float, duration_s: float, seed: int = 0, start_s: float | None = None) -> Trace:
    """``rate`` with a ``BURST_FACTOR``× burst for ``BURST_LENGTH_S`` in the middle."""
    t0 = duration_s / 2 - BURST_LENGTH_S / 2 if start_s is None else start_s
    t1 = t0 + BURST_LENGTH_S

    def rate_at(t: np.ndarray) -> np.ndarray:
        return np.where((t >= t0) & (t < t1), rate * BURST_FACTOR, rate)

    arrivals = _thinned(rate_at, rate * BURST_FACTOR, duration_s, seed)
    return Trace("burst", rate, arrivals, lambda s: rate * (BURST_FACTOR if t0 <= s < t1 else 1.0), (t0, t1))


def ramp(low: float, high: float, duration_s: float, seed: int = 0) -> Trace:
    """Linear from ``low`` up to ``high`` at half time and back down: the load rises and falls."""

    def rate_at(t: np.ndarray) -> np.ndarray:
        frac = 1.0 - np.abs(2.0 * t / duration_s - 1.0)
        return low + (high - low) * frac

    arrivals = _thinned(rate_at, high, duration_s, seed)
    return Trace("ramp", high, arrivals, lambda s: float(rate_at(np.asarray(s))))
