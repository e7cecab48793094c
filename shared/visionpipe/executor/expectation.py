"""What a request arriving now should expect of one stage: the wait before its batch leaves, and that batch's time.

Stages publish this (``visionpipe.stage_state``) so that every stage before them can subtract it from a
request's deadline: the budget a stage batches against is the deadline minus now minus what the stages after it
are expected to take. It comes from the latency model the executor already fits (``t(b) = k·b + c`` per phase)
and the arrival rate it already measures, so it follows the load without a profile:

* the batch a request joins is the keep-up batch at the measured rate (the keep-up rule), never smaller than the
  batches the stage has been sending lately;
* behind a queue (the executor's own and the broker's backlog, in requests) its items leave in the last of the
  batches that drain it, one per bottleneck time, after whatever the device still has booked;
* with no queue, its batch waits to fill at most what the adaptive policy lets it wait, or for the device.

``minimum`` is the floor: one item alone on an idle device. A request whose deadline leaves less than the
floor of this stage and the stages after it can no longer be met by anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from visionpipe.executor.latency import LatencyModel
from visionpipe.executor.policy import IDLE_FILL_FRACTION, keep_up_batch


@dataclass(frozen=True, slots=True)
class Expectation:
    """Seconds a request arriving now should expect: queued before its batch leaves, then the batch itself."""

    queue_s: float
    batch_s: float
    minimum_s: float  # one item alone on an idle device: nothing can be faster
    batch: int = 1  # the batch size the figures assume

    @property
    def total_s(self) -> float:
        return self.queue_s + self.batch_s


def alone_s(model: LatencyModel, b: float, overlap: bool) -> float:
    """A batch of ``b`` sent to an idle device, dispatch to output on the host (compute ends no sooner than the
    launcher has queued its last kernel)."""
    if overlap:
        return max(model.lead(b) + model.compute(b), model.launched(b)) + model.download(b)
    return model.total(b)


def expect(
    model: LatencyModel,
    rate: float,
    queued: float,
    *,
    overlap: bool,
    max_batch: int,
    busy_s: float = 0.0,
    recent_batch: float = 1.0,
    items: float = 1.0,
) -> Expectation:
    """The expectation for one message of ``items`` requests arriving behind ``queued`` requests.

    ``busy_s``: device time already booked ahead of it; ``recent_batch``: the mean batch size sent lately.
    Its items join the queue, so they leave in the last of the batches that drain it, not after them.
    """
    n = queued + items
    keep = keep_up_batch(model, rate, overlap, max_batch)
    b = min(max_batch, max(keep, math.ceil(recent_batch), 1))
    if n <= b:  # its batch is not full yet: it waits to fill (as long as the policy lets it) or for the device
        fill = min((b - n) / rate, IDLE_FILL_FRACTION * model.compute(b)) if rate > 0 else 0.0
        return Expectation(max(busy_s, fill), alone_s(model, b, overlap), alone_s(model, 1, overlap), batch=b)
    drain = min(max_batch, math.ceil(n))
    rounds = math.ceil(n / drain)
    queue_s = busy_s + (rounds - 1) * model.bottleneck(drain, overlap)
    return Expectation(queue_s, alone_s(model, drain, overlap), alone_s(model, 1, overlap), batch=drain)
