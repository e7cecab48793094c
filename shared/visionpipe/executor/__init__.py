"""Adaptive asynchronous batch executor: one per DNN service process.

``BatchExecutor`` batches single-item requests onto a ``Device`` (``TorchDevice``
on a GPU or CPU, ``SimDevice`` on a modelled clock) under a ``BatchPolicy``
chosen by ``make_policy(settings.executor)``. The discrete-event simulator
that runs the same scheduler and policies on a virtual clock, and every
benchmark of them, live in ``visionpipe.loadgen.bench``.
"""

from visionpipe.executor.device import Device
from visionpipe.executor.executor import BatchExecutor
from visionpipe.executor.latency import LatencyModel, Line, fit_line
from visionpipe.executor.policy import (
    AdaptivePolicy,
    AimdPolicy,
    BatchPolicy,
    Decision,
    FixedPolicy,
    QueueView,
    SlackPolicy,
    TimeoutPolicy,
    make_policy,
)
from visionpipe.executor.rate import RateEstimator
from visionpipe.executor.scheduler import DeadlineExceeded, Scheduler
from visionpipe.executor.sim_device import COST_MODELS, CostModel, PhaseCost, SimDevice, cost_model
from visionpipe.executor.torch_device import TorchDevice

__all__ = [
    "COST_MODELS",
    "AdaptivePolicy",
    "AimdPolicy",
    "BatchExecutor",
    "BatchPolicy",
    "CostModel",
    "DeadlineExceeded",
    "Decision",
    "Device",
    "FixedPolicy",
    "LatencyModel",
    "Line",
    "PhaseCost",
    "QueueView",
    "RateEstimator",
    "Scheduler",
    "SimDevice",
    "SlackPolicy",
    "TimeoutPolicy",
    "TorchDevice",
    "cost_model",
    "fit_line",
    "make_policy",
]
