"""A check, runnable without a GPU, that a device function keeps the no-host-synchronisation contract.

A stage's device function runs on the launcher thread and must return as soon
as its kernels are queued (``host_io``). What breaks that on a GPU is easy to
write and invisible on the CPU: a constant built from Python data inside the
call (``x.new_tensor([...])``, ``torch.tensor(..., device=x.device)``) is a
blocking copy from pageable memory on every batch; ``.item()``, ``.tolist()``,
``bool(t)``, ``nonzero`` and boolean-mask indexing wait for the GPU to learn a
value or a size. Each of them also makes CUDA-graph capture fail.

``forbid_host_sync()`` runs code under two torch modes and raises
``HostSyncError`` at the first such operation:

* a ``TorchFunctionMode`` sees the Python-level calls (tensor construction
  from Python data, reading values back to the host), which for a non-CPU
  target never reach the dispatcher as ops;
* a ``TorchDispatchMode`` sees the aten ops: ``lift_fresh`` (a tensor made
  from host data), copies between the host and a device, the ops whose
  output size or value needs the device's data, and any op that mixes a host
  tensor into a device computation.

``check_device_fn(fn, batch)`` runs ``fn`` once under it. With ``batch`` on
the ``meta`` device (shapes, no data) the function takes the branches it
takes on a GPU, and a host→"device" copy is a real ``_to_copy`` from the
CPU, so CI on a CPU-only machine checks the GPU path of every shipped
device function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Python-level calls that build a tensor from host data or read device data back to the host.
HOST_CALLS = frozenset(
    {
        "tensor",
        "as_tensor",
        "asarray",
        "new_tensor",
        "from_numpy",
        "item",
        "tolist",
        "numpy",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "unique_consecutive",
    }
)
# aten ops (overload packets) that make a tensor from host data, or whose result needs the device's values.
HOST_OPS = frozenset(
    {
        "lift_fresh",
        "lift_fresh_copy",
        "item",
        "_local_scalar_dense",
        "is_nonzero",
        "nonzero",
        "argwhere",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "equal",
    }
)
# Indexing with a boolean mask is a nonzero in disguise: its output size depends on the data.
INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
# Copies that may cross between host and device (``to`` reaches the dispatcher whole under inference mode).
COPY_OPS = frozenset({"to", "_to_copy", "copy_", "_copy_from", "_copy_from_and_resize"})


class HostSyncError(AssertionError):
    """A device function built a tensor from host data or waited for the device's values."""


def _is_host(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


class _Calls(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_CALLS:
            raise HostSyncError(f"{getattr(func, '__qualname__', name)}() in a device function: {_why(name)}")
        return func(*args, **(kwargs or {}))


class _Ops(TorchDispatchMode):
    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        op = func.overloadpacket.__name__
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if op in HOST_OPS:
            raise HostSyncError(f"aten.{op} in a device function: {_why(op)}")
        if op in INDEX_OPS and any(t.dtype in (torch.bool, torch.uint8) for t in _indices(args)):
            raise HostSyncError(f"aten.{op} with a boolean mask in a device function: {_why('nonzero')}")
        if op in COPY_OPS:
            _check_copy(op, args, kwargs)
        elif tensors and any(not _is_host(t) for t in tensors) and any(_is_host(t) for t in tensors):
            host = [tuple(t.shape) for t in tensors if _is_host(t)]
            raise HostSyncError(
                f"aten.{op} mixes host tensors {host} into a device computation: each launch reads them from host "
                "memory, and a captured graph keeps the value it saw"
            )
        return func(*args, **kwargs)


def _indices(args: tuple[Any, ...]) -> list[torch.Tensor]:
    if len(args) < 2:
        return []
    return [t for t in tree_leaves(args[1]) if isinstance(t, torch.Tensor)]


def _check_copy(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if op in ("to", "_to_copy"):
        src, dst = args[0].device, _target(args, kwargs)
    elif op == "copy_":
        dst, src = args[0].device, args[1].device
    else:  # _copy_from(self, dst)
        src, dst = args[0].device, args[1].device
    if (src.type == "cpu") != (dst.type == "cpu"):
        raise HostSyncError(
            f"aten.{op} from {src} to {dst} in a device function: a copy between host and device inside the call "
            "(a constant built on the host, or a result read back)"
        )


def _target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device:
    """Where ``to``/``_to_copy`` sends its tensor: a ``device`` keyword, a device or a tensor argument, or nowhere."""
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, (torch.device, str)):
            return torch.device(a)
    return torch.device(args[0].device)


READS = frozenset({"item", "_local_scalar_dense", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"})


def _why(name: str) -> str:
    if name in READS:
        return "reads a value back, so the launcher waits for the GPU to finish everything queued before it"
    if name in HOST_OPS | HOST_CALLS and not name.startswith(("lift_fresh", "tensor", "as", "new_", "from_")):
        return "its output size or value depends on the device's data, so the host waits for it"
    return (
        "a tensor built from host data: a copy from pageable memory every batch, which blocks the launcher and "
        "fails CUDA-graph capture; build it once, with the function"
    )


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Raise ``HostSyncError`` at the first host-data tensor or device-value read inside the block."""
    with _Calls(), _Ops():
        yield


def check_device_fn(fn: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> Any:
    """``fn(batch)`` under ``forbid_host_sync``; its output. Build ``fn`` first: building may use host data."""
    with torch.inference_mode(), forbid_host_sync():
        return fn(batch)
