"""The host-sync guard: each way a device function can wait for the GPU or copy host data is caught on a CPU.

The functions run on the ``meta`` device (shapes, no data), which takes the branches a GPU takes and makes
host→device copies visible as real copies from the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from visionpipe.executor.sync_guard import HostSyncError, check_device_fn

HOST_SCALAR = torch.ones(())

BAD: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "new_tensor": lambda x: x.float() - x.new_tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1),
    "tensor": lambda x: x.float() * torch.tensor(2.0, device=x.device),
    "as_tensor": lambda x: x.float() + torch.as_tensor([1.0, 2.0, 3.0], device=x.device).view(1, 3, 1, 1),
    "item": lambda x: x.float() * x.float().mean().item(),
    "tolist": lambda x: x[: len(x.sum(dim=(1, 2, 3)).tolist())],
    "bool": lambda x: x if x.sum() > 0 else x + 1,
    "nonzero": lambda x: x.flatten().nonzero(),
    "boolean mask": lambda x: x[x > 3],
    "host constant mixed in": lambda x: x.float() * HOST_SCALAR,
    "copy back": lambda x: x.cpu(),
    "copy up": lambda x: x.float() + torch.ones(3).to(x.device).view(1, 3, 1, 1),
}


@pytest.mark.parametrize("name", list(BAD))
def test_each_host_sync_is_caught_on_the_meta_device(name: str) -> None:
    batch = torch.zeros((2, 3, 4, 4), dtype=torch.uint8, device="meta")
    with pytest.raises(HostSyncError):
        check_device_fn(BAD[name], batch)


@pytest.mark.parametrize("name", ["new_tensor", "tensor", "item", "bool", "boolean mask"])
def test_host_data_and_value_reads_are_caught_on_the_cpu_too(name: str) -> None:
    with pytest.raises(HostSyncError):
        check_device_fn(BAD[name], torch.zeros((2, 3, 4, 4), dtype=torch.uint8))


def test_a_sync_free_function_passes_and_returns_its_output() -> None:
    mean = torch.tensor([1.0, 2.0, 3.0], device="meta").view(1, 3, 1, 1)  # built with the function: allowed

    def good(x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = (x.float() - mean) / 255.0
        top = y.flatten(1).topk(2, dim=1)
        keep = torch.arange(2, device=x.device) < (top.values > 0).sum(dim=1, keepdim=True)
        return {"scores": torch.where(keep, top.values, torch.zeros_like(top.values)), "count": keep.sum(dim=1)}

    out = check_device_fn(good, torch.zeros((2, 3, 4, 4), dtype=torch.uint8, device="meta"))
    assert out["scores"].shape == (2, 2) and out["count"].shape == (2,)
