"""Which stage a name means, and the worker that runs it: one place for ``serve``, ``run``, the gateway and ingest."""

from __future__ import annotations

from visionpipe.broker import Broker
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.stage import Stage
from visionpipe.services.runtime.worker import Worker
from visionpipe.settings import Settings
from visionpipe.topology import CLASSIFIER, DECODE, DETECTOR, STAGES


def make_stage(name: str, settings: Settings, metrics: Metrics) -> Stage:
    """The stage called ``name``; imports its module only when asked (decode needs no model code)."""
    if name == DECODE:
        from visionpipe.services.decode.stage import DecodeStage

        return DecodeStage(settings)
    if name == DETECTOR:
        from visionpipe.services.detector.stage import DetectorStage

        return DetectorStage(settings, metrics)
    if name == CLASSIFIER:
        from visionpipe.services.classifier.stage import ClassifierStage

        return ClassifierStage(settings, metrics)
    raise ValueError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")


def messages_per_consume(name: str, settings: Settings) -> int:
    """Messages a stage takes from the broker per consume call (not its device batch: that is the executor's)."""
    if name == DECODE:
        return settings.decode.batch  # decode works on what one consume brings, as one batch
    if name == DETECTOR:
        return settings.detector.messages_per_consume
    return settings.classifier.messages_per_consume


def make_worker(name: str, broker: Broker, settings: Settings, metrics: Metrics, drain: bool = False) -> Worker:
    stage = make_stage(name, settings, metrics)
    return Worker(stage, broker, settings, metrics, messages_per_consume(name, settings), drain=drain)
