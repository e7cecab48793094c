"""A torch function on a GPU, the next batch's upload beside the current compute, or on the CPU through the
same code.

Overlapped (CUDA, ``overlap=True``): pinned host buffers and device buffers,
each for ``max_batch`` items, and pinned buffers for the outputs, allocated
once per slot; an upload stream, a compute stream and a download stream
ordered by CUDA events, never by ``torch.cuda.synchronize()``. The work of
one batch is split over three host threads (the executor's):

* ``stage`` (the stager): copies the items straight from their bytes into a
  pinned buffer and queues its upload;
* ``launch`` (the launcher): queues ``fn`` on the compute stream behind the
  upload's event, then the download of every output tensor into the slot's
  pinned buffers behind the compute's event. ``fn`` must not synchronise
  with the host (see ``host_io`` for the contract), so the launcher returns
  as soon as the kernels are queued and the next batch's upload is never
  held up; the time it took is the ``launch`` phase;
* ``collect`` (a collector): waits on the batch's last event and reads the
  phase times from the events.

While batch n computes, batch n+1 is staged and uploaded and batch n−1's
outputs come down.

On a GPU every batch is padded up to a bucket (powers of two up to
``max_batch``, or the CUDA graphs' sizes): cuDNN builds a plan and the
allocators a block for each input shape the first time they see it, so only
a few shapes ever run, and warm-up runs each of them before any traffic.

Serial (``overlap=False``): one stream, each phase waited for before the
next — with ``pinned`` through a pinned buffer (the baseline that shows
what overlap alone buys), without it what a plain PyTorch server does
(stack into pageable memory, ``.to(device)``, forward, ``.cpu()``). On the
CPU the serial pageable path runs (no streams, no copy engines, no pinned
memory, no padding) and phases are timed with ``perf_counter_ns``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from visionpipe.executor.cuda_graphs import buckets as power_buckets
from visionpipe.executor.device import Device
from visionpipe.executor.host_io import PinnedOutputs, example, fill, record_stream, split_outputs, to_host, trim
from visionpipe.executor.scheduler import MAX_IN_FLIGHT_OVERLAP

# One slot per batch the scheduler lets be in flight: a slot's buffers are reused only after its batch is back.
SLOTS = MAX_IN_FLIGHT_OVERLAP
# Batches whose CUDA events are kept for inspection (tests, gpu-check) when ``event_log`` is on.
EVENT_LOG = 64
# A slot's previous batch is launched within milliseconds of being staged; this long means it never will be
# (a caller staged a batch and dropped it), and waiting on would hang the stager for good.
SLOT_WAIT_S = 30.0


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when there is one; asking for CUDA where there is none is an error, not a fallback."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for but torch sees no CUDA device")
    return device


def _timing_event(blocking: bool = False) -> torch.cuda.Event:
    # The collector waits on the last event of a batch: a blocking one lets its thread sleep instead of spin.
    return torch.cuda.Event(enable_timing=True, blocking=blocking)


@dataclass
class _Slot:
    host: torch.Tensor  # pinned
    dev: torch.Tensor
    uploaded: torch.cuda.Event  # the host buffer may be rewritten once this has fired (blocking: the stager sleeps)
    consumed: torch.cuda.Event  # the device buffer may be overwritten once compute has read it
    outputs: PinnedOutputs
    launched: threading.Event = field(default_factory=threading.Event)  # `consumed` is recorded for its batch
    used: bool = False


@dataclass
class _Staged:
    n: int
    stage_s: float
    slot: _Slot | None = None  # overlapped
    events: tuple[torch.cuda.Event, ...] = ()  # upload start, end
    batch: torch.Tensor | None = None  # serial: the host batch


@dataclass
class _CudaBatch:
    n: int
    events: tuple[torch.cuda.Event, ...]  # upload start/end, compute start/end, download end
    outputs: Any
    stage_s: float
    launch_s: float


@dataclass
class _DoneBatch:
    outputs: list[Any]
    timings: dict[str, float]


class TorchDevice(Device):
    """Runs ``fn`` over batches of items of ``item_shape``/``item_dtype`` (numpy arrays or CPU tensors)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], Any],
        item_shape: Sequence[int],
        item_dtype: torch.dtype = torch.uint8,
        max_batch: int = 32,
        device: str = "auto",
        overlap: bool = True,
        pinned: bool = True,
        buckets: Sequence[int] | None = None,
    ) -> None:
        self.fn = fn
        self.item_shape = tuple(item_shape)
        self.item_dtype = item_dtype
        self.max_batch = max_batch
        self.torch_device = torch.device(resolve_device(device))
        self.name = self.torch_device.type
        cuda = self.torch_device.type == "cuda"
        self.overlap = overlap and cuda
        self.pinned = cuda and (pinned or self.overlap)
        # Batch sizes a batch is padded up to: the given ones, else a graphed fn's, else powers of two (GPU only).
        if buckets is None:
            buckets = getattr(fn, "sizes", None) or (power_buckets(max_batch) if cuda else ())
        self.buckets = tuple(sorted({b for b in buckets if 0 < b <= max_batch}))
        # (upload start, upload end, compute start, compute end, download end) of recent batches, when not None.
        self.event_log: deque[tuple[torch.cuda.Event, ...]] | None = None
        self._next = 0
        self._slots: list[_Slot] = []
        if self.pinned:
            self._up, self._comp, self._down = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
            shape = (max_batch, *self.item_shape)
            for _ in range(SLOTS if self.overlap else 1):
                slot = _Slot(  # zeros: the padding rows of a batch hold real numbers from the start
                    host=torch.zeros(shape, dtype=item_dtype, pin_memory=True),
                    dev=torch.zeros(shape, dtype=item_dtype, device=self.torch_device),
                    uploaded=torch.cuda.Event(blocking=True),
                    consumed=torch.cuda.Event(),
                    outputs=PinnedOutputs(max_batch),
                )
                slot.launched.set()
                self._slots.append(slot)

    @property
    def mechanics(self) -> str:
        return "overlapped" if self.overlap else ("serial-pinned" if self.pinned else "serial-pageable")

    def example_item(self) -> np.ndarray:
        return example(self.item_shape, self.item_dtype)

    def padded(self, n: int) -> int:
        """The bucket a batch of ``n`` runs as: the smallest at least ``n``, or ``n`` past the largest."""
        return next((b for b in self.buckets if b >= n), n)

    @property
    def output_allocations(self) -> int:
        """Output buffers allocated so far: one per output and slot once warm, more only if outputs are kept."""
        return sum(slot.outputs.allocations for slot in self._slots)

    def warmup(self, sizes: Sequence[int], repeats: int) -> dict[str, list[tuple[int, float]]]:
        """Capture CUDA graphs first (``fn.capture``, before any traffic: capturing synchronises), then run every
        bucket once and time ``sizes``."""
        capture = getattr(self.fn, "capture", None)
        if capture is not None and self.torch_device.type == "cuda":
            like = torch.zeros((self.max_batch, *self.item_shape), dtype=self.item_dtype, device=self.torch_device)
            with torch.inference_mode():
                capture(like)
        return super().warmup(sizes, repeats)

    def stage(self, items: Sequence[Any]) -> _Staged:
        n = len(items)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"batch of {n} items; this device takes 1..{self.max_batch}")
        if not self.overlap:
            return self._stage_serial(items)
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.used:
            # The compute reading this device buffer is queued (so `consumed` is current)...
            if not slot.launched.wait(SLOT_WAIT_S):
                raise RuntimeError("a staged batch was never launched: launch() every batch stage() returned")
            slot.uploaded.synchronize()  # the upload from this host buffer, SLOTS batches back, is done
        slot.used = True
        slot.launched.clear()
        t0 = time.perf_counter_ns()
        try:
            fill(slot.host, items, self.item_shape)
        except Exception:
            slot.launched.set()
            raise
        stage_s = (time.perf_counter_ns() - t0) / 1e9
        up0, up1 = _timing_event(), _timing_event()
        with torch.cuda.stream(self._up):
            self._up.wait_event(slot.consumed)
            up0.record()
            slot.dev[:n].copy_(slot.host[:n], non_blocking=True)
            up1.record()
            slot.uploaded.record()
        return _Staged(n, stage_s, slot, (up0, up1))

    def _stage_serial(self, items: Sequence[Any]) -> _Staged:
        t0 = time.perf_counter_ns()
        if self.pinned:
            batch = self._slots[0].host[: len(items)]
            fill(batch, items, self.item_shape)
        else:  # a plain server: a fresh pageable batch
            batch = torch.empty((len(items), *self.item_shape), dtype=self.item_dtype)
            fill(batch, items, self.item_shape)
        return _Staged(len(items), (time.perf_counter_ns() - t0) / 1e9, batch=batch)

    def launch(self, staged: _Staged) -> _CudaBatch | _DoneBatch:
        if staged.slot is None:
            return self._run_serial(staged)
        slot, n = staged.slot, staged.n
        comp0, comp1, down1 = _timing_event(), _timing_event(), _timing_event(blocking=True)
        t0 = time.perf_counter_ns()
        try:
            with torch.cuda.stream(self._comp), torch.inference_mode():
                self._comp.wait_event(staged.events[1])
                comp0.record()
                out = self.fn(slot.dev[: self.padded(n)])
                comp1.record()
                slot.consumed.record()
        finally:
            slot.launched.set()
        with torch.cuda.stream(self._down):
            self._down.wait_event(comp1)
            record_stream(out, self._down)
            host_out = slot.outputs.download(out, n)
            down1.record()
        launch_s = (time.perf_counter_ns() - t0) / 1e9
        return _CudaBatch(n, (*staged.events, comp0, comp1, down1), host_out, staged.stage_s, launch_s)

    def collect(self, handle: _CudaBatch | _DoneBatch) -> tuple[list[Any], dict[str, float]]:
        if isinstance(handle, _DoneBatch):
            return handle.outputs, handle.timings
        up0, up1, comp0, comp1, down1 = handle.events
        down1.synchronize()  # this batch only; other streams keep running
        timings = {
            "stage": handle.stage_s,
            "upload": up0.elapsed_time(up1) / 1e3,
            "compute": comp0.elapsed_time(comp1) / 1e3,
            "download": comp1.elapsed_time(down1) / 1e3,
            "launch": handle.launch_s,
        }
        if self.event_log is not None:
            self.event_log.append(handle.events)
        return split_outputs(handle.outputs, handle.n), timings

    def _run_serial(self, staged: _Staged) -> _DoneBatch:
        assert staged.batch is not None
        cuda = self.torch_device.type == "cuda"
        n, size = staged.n, self.padded(staged.n)
        t0 = time.perf_counter_ns()
        if self.pinned:  # through the slot's device buffer, as the overlapped path
            slot = self._slots[0]
            slot.dev[:n].copy_(staged.batch, non_blocking=True)
            batch = slot.dev[:size]
        else:
            batch = staged.batch.to(self.torch_device)
            if size > n:
                batch = torch.cat((batch, batch.new_zeros((size - n, *self.item_shape))))
        if cuda:
            torch.cuda.synchronize(self.torch_device)  # serial baseline: a plain server blocks here anyway
        t1 = time.perf_counter_ns()
        with torch.inference_mode():
            out = self.fn(batch)
        launched = time.perf_counter_ns()
        if cuda:
            torch.cuda.synchronize(self.torch_device)
        t2 = time.perf_counter_ns()
        host = self._slots[0].outputs.download(out, n) if self.pinned else to_host(trim(out, n), non_blocking=False)
        if self.pinned:
            torch.cuda.synchronize(self.torch_device)
        t3 = time.perf_counter_ns()
        timings = {
            "stage": staged.stage_s,
            "upload": (t1 - t0) / 1e9,
            "launch": (launched - t1) / 1e9,
            "compute": (t2 - t1) / 1e9,
            "download": (t3 - t2) / 1e9,
        }
        return _DoneBatch(split_outputs(host, n), timings)

    def enable_event_log(self) -> None:
        self.event_log = deque(maxlen=EVENT_LOG)

    def close(self) -> None:
        self._slots.clear()
