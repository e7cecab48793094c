"""Outputs back to the host: one buffer per output and slot, reused only when nobody holds the last batch's rows."""

from __future__ import annotations

import torch

from visionpipe.executor.host_io import PinnedOutputs, split_outputs, trim


def _batch(value: float, rows: int = 4) -> dict[str, torch.Tensor]:
    return {"scores": torch.full((rows, 5), value), "count": torch.full((rows,), int(value), dtype=torch.int32)}


def test_released_outputs_reuse_the_same_buffers() -> None:
    outputs = PinnedOutputs(rows=8, pinned=False)
    first = outputs.download(_batch(1.0), 3)
    ptr = first["scores"].data_ptr()
    assert first["scores"].shape == (3, 5) and outputs.allocations == 2
    del first
    second = outputs.download(_batch(2.0), 4)
    assert second["scores"].data_ptr() == ptr and outputs.allocations == 2
    assert (second["scores"] == 2.0).all()


def test_an_output_still_held_is_never_overwritten() -> None:
    outputs = PinnedOutputs(rows=8, pinned=False)
    kept = split_outputs(outputs.download(_batch(1.0), 2), 2)[1]["scores"]
    view = kept.numpy()  # a numpy view holds the memory too
    del kept
    second = outputs.download(_batch(2.0), 2)
    assert (view == 1.0).all() and (second["scores"] == 2.0).all()
    assert outputs.allocations == 3  # a fresh scores buffer; count was free again


def test_a_new_output_shape_takes_a_new_buffer() -> None:
    outputs = PinnedOutputs(rows=4, pinned=False)
    outputs.download(torch.zeros(4, 3), 4)
    out = outputs.download(torch.zeros(4, 5, dtype=torch.int64), 2)
    assert out.shape == (2, 5) and out.dtype == torch.int64 and outputs.allocations == 2


def test_lists_and_unbatched_outputs_still_come_back() -> None:
    outputs = PinnedOutputs(rows=4, pinned=False)
    assert [t.item() for t in outputs.download([torch.tensor(1), torch.tensor(2), torch.tensor(3)], 2)] == [1, 2]
    assert outputs.download({"total": torch.tensor(5.0)}, 2)["total"].item() == 5.0


def test_trim_keeps_the_real_rows_of_a_padded_batch() -> None:
    out = trim({"a": torch.arange(8).view(4, 2), "b": torch.arange(4)}, 3)
    assert out["a"].shape == (3, 2) and out["b"].tolist() == [0, 1, 2]
    assert trim([1, 2, 3, 4], 2) == [1, 2]
