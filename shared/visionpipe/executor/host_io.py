"""The host side of a batch: items into one batch buffer, outputs back to the host and out to each item.

The contract a stage's device function keeps (the detector's, the
classifier's): it takes the uint8 batch on the device and returns a dict of
*batched* tensors, each with the batch size as its first dimension and a
fixed shape for a given batch size (variable counts padded, with a per-item
``count`` tensor), computed on the current (compute) stream with no host
synchronisation (``sync_guard`` checks this on a CPU). The batch it gets may
be padded up to a bucket size; the device keeps the first n rows of every
output. It copies every tensor of that dict into the slot's pinned host
buffers on the download stream, and item i gets ``{k: v[i]}`` (the stage
trims by count), a view of those buffers: a stage copies what it keeps past
its request, or the slot must take fresh buffers for its next batch. A plain
tensor (item i gets row i) and a list with one output per item are accepted
too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

# One host thread copies ~10 GB/s; a batch of 256 crops (38 MB) or 32 letterboxed images (39 MB) would take ~4 ms
# on one, as long as the GPU's whole forward. numpy releases the GIL while it copies, so a few threads split it.
STAGE_THREADS = min(4, os.cpu_count() or 1)
# Below this a batch is copied on the calling thread: handing work to other threads costs ~50 µs.
STAGE_PARALLEL_BYTES = 4 << 20
_pool: ThreadPoolExecutor | None = None


def _copy_rows(
    rows: np.ndarray, buffer: torch.Tensor, items: Sequence[Any], start: int, item_shape: tuple[int, ...]
) -> None:
    """Items ``start``… into ``rows`` (a slice of ``buffer``'s numpy view starting at row ``start``)."""
    for i in range(start, min(start + len(rows), len(items))):
        item = items[i]
        if tuple(item.shape) != item_shape:
            raise ValueError(f"item of shape {tuple(item.shape)}; this device takes {item_shape}")
        if isinstance(item, torch.Tensor):
            buffer[i].copy_(item)
        else:
            rows[i - start] = item


def fill(buffer: torch.Tensor, items: Sequence[Any], item_shape: tuple[int, ...]) -> None:
    """Copy ``items`` into rows 0..n−1 of a CPU ``buffer``: one copy per item, straight from its bytes.

    Items are numpy arrays (often read-only views of a received message) or CPU tensors. numpy assigns
    from a read-only view without a copy of its own and without the warning ``torch.from_numpy`` gives.
    A large batch is split over ``STAGE_THREADS`` threads.
    """
    global _pool
    n = len(items)
    rows = buffer.numpy()
    if n < 2 or STAGE_THREADS < 2 or rows[:n].nbytes < STAGE_PARALLEL_BYTES:
        _copy_rows(rows[:n], buffer, items, 0, item_shape)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(STAGE_THREADS, thread_name_prefix="vp-stage-copy")
    step = -(-n // STAGE_THREADS)
    parts = [_pool.submit(_copy_rows, rows[s : s + step], buffer, items, s, item_shape) for s in range(0, n, step)]
    for part in parts:
        part.result()


def to_host(out: Any, non_blocking: bool, pinned: bool = False) -> Any:
    """Tensors (also inside tuples, lists and dicts) copied to the CPU; into pinned memory when ``pinned``.

    A pinned destination lets the copy run on a copy engine, asynchronously to the host, on the current
    stream; the caching host allocator keeps such buffers, so after warm-up allocating one costs nothing.
    """
    if isinstance(out, torch.Tensor):
        if not pinned or out.device.type == "cpu":
            return out.to("cpu", non_blocking=non_blocking)
        host = torch.empty(out.shape, dtype=out.dtype, device="cpu", pin_memory=True)
        return host.copy_(out, non_blocking=non_blocking)
    if isinstance(out, dict):
        return {k: to_host(v, non_blocking, pinned) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(to_host(v, non_blocking, pinned) for v in out)
    return out


def trim(out: Any, n: int) -> Any:
    """The first ``n`` rows of a padded batch's outputs (a tensor, a dict of them, or a list per item)."""
    if isinstance(out, torch.Tensor):
        return out[:n]
    if isinstance(out, dict):
        return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(out[:n])
    return out


def _use_count(t: torch.Tensor) -> int | None:
    """References to ``t``'s memory (every view, numpy arrays included); None where torch cannot say."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else int(count(t.untyped_storage()._cdata))


class PinnedOutputs:
    """One slot's host buffers for a device function's outputs: allocated once, reused batch after batch.

    Pinned memory costs a ``cudaHostAlloc`` (milliseconds, and it may wait for the device) the first time a
    size is asked for; allocated per batch, every new output size would pay it on the launcher thread in the
    middle of traffic. Here each output has one ``rows``-row buffer per slot, and a batch's outputs are
    copied into its first n rows. They are handed out as views: while anything still holds one (the storage's
    use count says so), the buffer is left to its holders and the slot takes a fresh one (``allocations``
    counts these), so no output is ever overwritten under its reader.
    """

    def __init__(self, rows: int, pinned: bool = True) -> None:
        self.rows = rows
        self.pinned = pinned
        self.allocations = 0
        self._buffers: dict[str | None, tuple[torch.Tensor, int | None]] = {}

    def download(self, out: Any, n: int) -> Any:
        """The first ``n`` rows of ``out`` queued for copying into this slot's buffers (current stream)."""
        if isinstance(out, torch.Tensor):
            return self._copy(None, out, n)
        if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
            return {k: self._copy(k, v, n) for k, v in out.items()}
        return to_host(trim(out, n), non_blocking=True, pinned=self.pinned)

    def _copy(self, key: str | None, t: torch.Tensor, n: int) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] < n or n > self.rows:  # not batched: the contract's check names it later
            return to_host(t, non_blocking=True, pinned=self.pinned)
        return self._buffer(key, t)[:n].copy_(t[:n], non_blocking=True)

    def _buffer(self, key: str | None, t: torch.Tensor) -> torch.Tensor:
        entry = self._buffers.get(key)
        if entry is not None:
            buf, baseline = entry
            count = _use_count(buf)
            fits = buf.shape[1:] == t.shape[1:] and buf.dtype == t.dtype
            if fits and count is not None and baseline is not None and count <= baseline:
                return buf
        buf = torch.empty((self.rows, *t.shape[1:]), dtype=t.dtype, pin_memory=self.pinned)
        self._buffers[key] = (buf, _use_count(buf))
        self.allocations += 1
        return buf


def record_stream(out: Any, stream: torch.cuda.Stream) -> None:
    """Outputs allocated on the compute stream are read on the download stream: tell the caching allocator."""
    if isinstance(out, torch.Tensor):
        out.record_stream(stream)
    elif isinstance(out, dict):
        for v in out.values():
            record_stream(v, stream)
    elif isinstance(out, (list, tuple)):
        for v in out:
            record_stream(v, stream)


def split_outputs(out: Any, n: int) -> list[Any]:
    """One output per item: row i of a tensor, ``{k: v[i]}`` of a dict of batched tensors, or a list's entries."""
    if isinstance(out, torch.Tensor):
        rows = list(out.unbind(0))
    elif isinstance(out, dict):
        if any(not isinstance(v, torch.Tensor) or v.shape[:1] != (n,) for v in out.values()):
            shapes = {k: tuple(getattr(v, "shape", ())) for k, v in out.items()}
            raise ValueError(f"fn returned a dict whose values are not all batched over {n} items: {shapes}")
        return [{k: v[i] for k, v in out.items()} for i in range(n)]
    else:
        rows = list(out)
    if len(rows) != n:
        raise ValueError(f"fn returned {len(rows)} outputs for a batch of {n}")
    return rows


def example(item_shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    return torch.zeros(item_shape, dtype=dtype).numpy()
