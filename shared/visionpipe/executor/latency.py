"""The executor's cost model: each phase of a batch takes ``t(b) = k·b + c``.

Kept apart from the scheduler so that it can be tested without an event loop
or a GPU. Times are in seconds (floats): they are durations, never clock
readings. The fit is ordinary least squares over a ring buffer of recent
batches, made robust in three ways because a GPU's timings are not clean:

* the first batches after start-up (cuDNN autotune, lazy allocation, JIT)
  are skipped;
* points far from the first fit (more than ``OUTLIER_MADS`` robust standard
  deviations) are dropped and the line refitted, so one stalled batch does
  not tilt the model;
* ``k`` and ``c`` are clamped at zero — a negative slope or intercept is a
  fitting artefact (launch-bound models are flat up to b≈64) and would make
  the policy believe large batches are free or small ones cost nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

# stage: the host copy into the (pinned) batch buffer, on its own thread; upload: host→device DMA; launch: the host
# time the launcher thread spends queueing the model's kernels and the download; compute: the model on the compute
# stream; download: device→host DMA. With overlap each is its own serialising resource.
PHASES = ("stage", "upload", "launch", "compute", "download")
# Serially one thread launches and then waits, so the compute it times already holds the launch: not added again.
SERIAL_PHASES = ("stage", "upload", "compute", "download")

# Batches timed at start-up or just after it include cuDNN autotuning and allocator growth.
WARMUP_SKIP = 2
# 3.5 robust standard deviations: keeps ordinary jitter (a few %), drops a stalled batch (2x+).
OUTLIER_MADS = 3.5
# MAD of a normal distribution is 0.6745 sigma; this turns a MAD into a sigma estimate.
MAD_TO_SIGMA = 1.4826
# Below this spread (seconds) residuals are timer noise; never call a point an outlier for less.
MIN_SIGMA_S = 20e-6
# Refitting costs a few numpy calls; doing it every 4 batches is plenty at hundreds of batches/s.
REFIT_EVERY = 4


@dataclass(frozen=True, slots=True)
class Line:
    """``t(b) = k·b + c`` in seconds."""

    k: float = 0.0
    c: float = 0.0

    def __call__(self, b: float) -> float:
        return self.k * b + self.c


def fit_line(sizes: Iterable[float], times: Iterable[float], prior_k: float = 0.0) -> Line:
    """Robust least-squares line through (batch size, seconds), clamped to k, c ≥ 0.

    With a single distinct batch size the slope cannot be seen; ``prior_k``
    (the last good slope) is kept and only the intercept moves.
    """
    b = np.asarray(list(sizes), dtype=float)
    t = np.asarray(list(times), dtype=float)
    if b.size == 0:
        return Line(prior_k, 0.0)
    line = _ols(b, t, prior_k)
    if b.size >= 4:
        resid = t - (line.k * b + line.c)
        sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(resid - np.median(resid)))), MIN_SIGMA_S)
        keep = np.abs(resid - np.median(resid)) <= OUTLIER_MADS * sigma
        if 2 <= keep.sum() < b.size:
            line = _ols(b[keep], t[keep], prior_k)
    return _clamp(line, b, t)


def _ols(b: np.ndarray, t: np.ndarray, prior_k: float) -> Line:
    if b.size < 2 or float(np.ptp(b)) == 0.0:
        return Line(prior_k, float(np.median(t)) - prior_k * float(np.mean(b)))
    k, c = np.polyfit(b, t, 1)
    return Line(float(k), float(c))


def _clamp(line: Line, b: np.ndarray, t: np.ndarray) -> Line:
    if line.k < 0.0:  # flat region: the median time is the best constant
        return Line(0.0, max(float(np.median(t)), 0.0))
    if line.c < 0.0:  # through the origin: k = Σbt / Σb²
        denom = float(np.dot(b, b))
        return Line(max(float(np.dot(b, t)) / denom, 0.0) if denom else line.k, 0.0)
    return line


class PhaseModel:
    """One phase's line, refitted over the last ``history`` batches."""

    def __init__(self, history: int, skip: int = WARMUP_SKIP, refit_every: int = REFIT_EVERY) -> None:
        self.samples: deque[tuple[int, float]] = deque(maxlen=max(history, 2))
        self.line = Line()
        self._skip = skip
        self._refit_every = max(refit_every, 1)
        self._since_fit = 0

    def seed(self, samples: Iterable[tuple[int, float]]) -> None:
        """Initial fit from warm-up timings (these are not skipped: warm-up already discarded its first runs)."""
        self.samples.extend(samples)
        self.refit()

    def observe(self, b: int, seconds: float) -> None:
        if self._skip > 0:
            self._skip -= 1
            return
        self.samples.append((b, seconds))
        self._since_fit += 1
        if self._since_fit >= self._refit_every:
            self.refit()

    def refit(self) -> None:
        self._since_fit = 0
        if self.samples:
            sizes, times = zip(*self.samples, strict=True)
            self.line = fit_line(sizes, times, prior_k=self.line.k)


class LatencyModel:
    """Stage, upload, launch, compute and download lines of one device, and the sums the policies need."""

    def __init__(self, history: int = 64, skip: int = WARMUP_SKIP, refit_every: int = REFIT_EVERY) -> None:
        self.phases = {p: PhaseModel(history, skip, refit_every) for p in PHASES}

    @classmethod
    def from_lines(cls, lines: Mapping[str, Line], history: int = 64) -> LatencyModel:
        """A model that starts from known lines (tests, simulations with a known cost)."""
        model = cls(history)
        for phase, line in lines.items():
            model.phases[phase].line = line
        return model

    def seed(self, samples: Mapping[str, Iterable[tuple[int, float]]]) -> None:
        for phase, pts in samples.items():
            self.phases[phase].seed(pts)

    def observe(self, b: int, timings: Mapping[str, float]) -> None:
        """Record one finished batch; ``timings`` holds seconds per phase (other keys are ignored)."""
        for phase in PHASES:
            if phase in timings:
                self.phases[phase].observe(b, timings[phase])

    def line(self, phase: str) -> Line:
        return self.phases[phase].line

    def stage(self, b: float) -> float:
        return self.phases["stage"].line(b)

    def upload(self, b: float) -> float:
        return self.phases["upload"].line(b)

    def compute(self, b: float) -> float:
        return self.phases["compute"].line(b)

    def download(self, b: float) -> float:
        return self.phases["download"].line(b)

    def launch(self, b: float) -> float:
        return self.phases["launch"].line(b)

    def lead(self, b: float) -> float:
        """Dispatch until the batch is on the device: the host staging copy, then the upload."""
        return self.stage(b) + self.upload(b)

    def launched(self, b: float) -> float:
        """Dispatch until the last kernel is queued: the staging copy, then the launch; compute cannot end sooner."""
        return self.stage(b) + self.launch(b)

    def total(self, b: float) -> float:
        """Processing time of one batch with nothing overlapped, dispatch to output on the host."""
        return sum(self.phases[p].line(b) for p in SERIAL_PHASES)

    def streams(self, overlap: bool) -> list[Line]:
        """One line per resource that serialises batches: every phase its own with overlap, one sum without.

        With overlap the launcher thread is a resource of its own: an eager model whose launch takes longer than
        its kernels is bound by it, whatever the GPU could do.
        """
        if overlap:
            return [self.line(p) for p in PHASES]
        lines = [self.line(p) for p in SERIAL_PHASES]
        return [Line(sum(line.k for line in lines), sum(line.c for line in lines))]

    def bottleneck(self, b: float, overlap: bool) -> float:
        """Time per batch the device sustains: the slowest stream when they overlap, the sum when serial."""
        return max(line(b) for line in self.streams(overlap))

    def ceiling(self, overlap: bool) -> float:
        """Concurrency ceiling 1/k (requests/s), of the steepest stream; inf when every slope is zero.

        With overlap this is 1/max(k_p): each phase runs on its own resource, so the steepest one bounds the
        rate however large the batch (an upload slower per image than compute caps it, not compute).
        """
        k = max(line.k for line in self.streams(overlap))
        return 1.0 / k if k > 0 else float("inf")
