"""A torch function on a GPU with seed 001's mechanics, or on the CPU through the same code.

Overlapped (CUDA, ``overlap=True``): two pinned host buffers and two device
buffers, each for ``max_batch`` items, allocated once; an upload stream, a
compute stream and a download stream ordered by CUDA events, never by
``torch.cuda.synchronize()``. While batch n computes, batch n+1 is copied
into the other pinned buffer and uploaded, and batch n−1's outputs come
down. Phase times are read from the same events once the batch is done.

Serial (``overlap=False``): what a plain PyTorch server does — stack into
pageable memory, ``.to(device)``, forward, ``.cpu()``, one stream.

On the CPU the serial path runs (there are no streams or copy engines to
overlap) and phases are timed with ``perf_counter_ns``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from visionpipe.executor.device import Device

# Two slots double-buffer the host and device inputs: one uploading while the other is read by compute.
SLOTS = 2


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when there is one; asking for CUDA where there is none is an error, not a fallback."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for but torch sees no CUDA device")
    return device


def to_host(out: Any, non_blocking: bool) -> Any:
    """Tensors (also inside tuples, lists and dicts) copied to the CPU."""
    if isinstance(out, torch.Tensor):
        return out.to("cpu", non_blocking=non_blocking)
    if isinstance(out, dict):
        return {k: to_host(v, non_blocking) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(to_host(v, non_blocking) for v in out)
    return out


def _record_stream(out: Any, stream: torch.cuda.Stream) -> None:
    # Outputs allocated on the compute stream are read on the download stream: tell the caching allocator.
    if isinstance(out, torch.Tensor):
        out.record_stream(stream)
    elif isinstance(out, dict):
        for v in out.values():
            _record_stream(v, stream)
    elif isinstance(out, (list, tuple)):
        for v in out:
            _record_stream(v, stream)


def split_outputs(out: Any, n: int) -> list[Any]:
    """fn may return one batched tensor, a dict of them, or one output per item; the caller gets a list of n.

    A dict's tensors are batched along their first dimension: item i gets ``{k: v[i]}``.
    """
    if isinstance(out, torch.Tensor):
        return list(out.unbind(0))
    if isinstance(out, dict):
        return [{k: v[i] for k, v in out.items()} for i in range(n)]
    outputs = list(out)
    if len(outputs) != n:
        raise ValueError(f"fn returned {len(outputs)} outputs for a batch of {n}")
    return outputs


@dataclass
class _Slot:
    host: torch.Tensor  # pinned
    dev: torch.Tensor
    uploaded: torch.cuda.Event  # host buffer may be rewritten once this has fired
    consumed: torch.cuda.Event  # device buffer may be overwritten once compute has read it
    used: bool = False


@dataclass
class _CudaBatch:
    n: int
    events: list[torch.cuda.Event]  # upload start/end, compute start/end, download end
    outputs: Any


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
    ) -> None:
        self.fn = fn
        self.item_shape = tuple(item_shape)
        self.item_dtype = item_dtype
        self.max_batch = max_batch
        self.torch_device = torch.device(resolve_device(device))
        self.name = self.torch_device.type
        self.overlap = overlap and self.torch_device.type == "cuda"
        self._next = 0
        self._slots: list[_Slot] = []
        if self.overlap:
            self._up, self._comp, self._down = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
            shape = (max_batch, *self.item_shape)
            for _ in range(SLOTS):
                self._slots.append(
                    _Slot(
                        host=torch.empty(shape, dtype=item_dtype, pin_memory=True),
                        dev=torch.empty(shape, dtype=item_dtype, device=self.torch_device),
                        uploaded=torch.cuda.Event(),
                        consumed=torch.cuda.Event(),
                    )
                )

    def example_item(self) -> np.ndarray:
        return torch.zeros(self.item_shape, dtype=self.item_dtype).numpy()

    def launch(self, items: Sequence[Any]) -> _CudaBatch | _DoneBatch:
        if not 0 < len(items) <= self.max_batch:
            raise ValueError(f"batch of {len(items)} items; this device takes 1..{self.max_batch}")
        if self.overlap:
            return self._launch_streams(items)
        return self._run_serial(items)

    def collect(self, handle: _CudaBatch | _DoneBatch) -> tuple[list[Any], dict[str, float]]:
        if isinstance(handle, _DoneBatch):
            return handle.outputs, handle.timings
        up0, up1, comp0, comp1, down1 = handle.events
        down1.synchronize()  # this batch only; other streams keep running
        timings = {
            "upload": up0.elapsed_time(up1) / 1e3,
            "compute": comp0.elapsed_time(comp1) / 1e3,
            "download": comp1.elapsed_time(down1) / 1e3,
        }
        return split_outputs(handle.outputs, handle.n), timings

    def _as_tensor(self, item: Any) -> torch.Tensor:
        if isinstance(item, np.ndarray):
            # Views of a received message are read-only and torch.from_numpy warns on those; the bytes are
            # copied into the batch buffer next anyway, so a copy here only costs on that path.
            t = torch.from_numpy(item if item.flags.writeable else item.copy())
        else:
            t = torch.as_tensor(item)
        if tuple(t.shape) != self.item_shape:
            raise ValueError(f"item of shape {tuple(t.shape)}; this device takes {self.item_shape}")
        return t

    def _launch_streams(self, items: Sequence[Any]) -> _CudaBatch:
        n = len(items)
        slot = self._slots[self._next]
        self._next = (self._next + 1) % SLOTS
        if slot.used:
            slot.uploaded.synchronize()  # the upload two batches back must have left this pinned buffer
        slot.used = True
        for i, item in enumerate(items):
            slot.host[i].copy_(self._as_tensor(item))
        events = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
        up0, up1, comp0, comp1, down1 = events
        with torch.cuda.stream(self._up):
            self._up.wait_event(slot.consumed)  # compute two batches back has finished reading this device slot
            up0.record()
            dev = slot.dev[:n]
            dev.copy_(slot.host[:n], non_blocking=True)
            up1.record()
            slot.uploaded.record()
        with torch.cuda.stream(self._comp), torch.inference_mode():
            self._comp.wait_event(up1)
            comp0.record()
            out = self.fn(dev)
            comp1.record()
            slot.consumed.record()
        with torch.cuda.stream(self._down):
            self._down.wait_event(comp1)
            _record_stream(out, self._down)
            host_out = to_host(out, non_blocking=True)
            down1.record()
        return _CudaBatch(n, events, host_out)

    def _run_serial(self, items: Sequence[Any]) -> _DoneBatch:
        cuda = self.torch_device.type == "cuda"
        t0 = time.perf_counter_ns()
        batch = torch.stack([self._as_tensor(it) for it in items]).to(self.torch_device)
        if cuda:
            torch.cuda.synchronize(self.torch_device)  # serial baseline: a plain server blocks here anyway
        t1 = time.perf_counter_ns()
        with torch.inference_mode():
            out = self.fn(batch)
        if cuda:
            torch.cuda.synchronize(self.torch_device)
        t2 = time.perf_counter_ns()
        host = to_host(out, non_blocking=False)
        t3 = time.perf_counter_ns()
        timings = {"upload": (t1 - t0) / 1e9, "compute": (t2 - t1) / 1e9, "download": (t3 - t2) / 1e9}
        return _DoneBatch(split_outputs(host, len(items)), timings)

    def close(self) -> None:
        self._slots.clear()
