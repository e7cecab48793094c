"""The pipeline's shape in one place: which stages there are, what each reads and writes, and its group.

Everything that needs the shape — ingress counting the backlog, a worker
choosing its streams, ``visionpipe run`` creating them, the load generator,
the deployment drift tests — reads it here, so a stage added or a group
renamed cannot leave an orphan group that no one acks (and that would then
hold the backpressure watermark up forever).

Stage names double as the stamp keys in envelopes and, unless
``service.group`` says otherwise, as consumer-group names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visionpipe.settings import Settings

INGRESS = "ingress"
DECODE = "decode"
DETECTOR = "detector"
CLASSIFIER = "classifier"
STAGES = (DECODE, DETECTOR, CLASSIFIER)
# Where stage processes announce themselves (under the streams' prefix); no stage consumes it.
STATE_STREAM = "stages"
# The keys of StreamSettings, in the order a request travels them.
STREAM_KEYS = ("frames", "tensors", "crops", "results", "dead_letter")


@dataclass(frozen=True)
class Hop:
    """One stage's place in the pipeline: the stream it consumes and the one it publishes to."""

    stage: str
    source: str  # a key of StreamSettings
    sink: str


HOPS = (Hop(DECODE, "frames", "tensors"), Hop(DETECTOR, "tensors", "crops"), Hop(CLASSIFIER, "crops", "results"))
_BY_STAGE = {h.stage: h for h in HOPS}


def hop(stage: str) -> Hop:
    try:
        return _BY_STAGE[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}") from None


def upstream(stage: str) -> tuple[str, ...]:
    """The stages before ``stage``, in order."""
    return STAGES[: STAGES.index(hop(stage).stage)]


def previous(stage: str) -> str:
    """Who published what ``stage`` consumes: the stage before it, or ingress for the first."""
    before = upstream(stage)
    return before[-1] if before else INGRESS


def group(stage: str, settings: Settings) -> str:
    """The consumer group of ``stage``: ``service.group`` when set, else the stage's name.

    The same answer for the stage that consumes and for ingress that counts its
    backlog: a custom group that only workers knew of would leave the default
    group behind, never acked, its backlog counted for ever.
    """
    return settings.service.group or stage


def input_stream(stage: str, settings: Settings) -> str:
    return settings.streams.name(hop(stage).source)


def output_stream(stage: str, settings: Settings) -> str:
    return settings.streams.name(hop(stage).sink)


def stream_names(settings: Settings) -> list[str]:
    """Every stream of the pipeline, frames to dead letters, under the settings' prefix."""
    return [settings.streams.name(key) for key in STREAM_KEYS]


def state_stream(settings: Settings) -> str:
    """Where every stage process announces its state and expectation (``visionpipe.stage_state``).

    Beside the pipeline's streams, not one of them: no stage consumes it and the front door's byte bound does
    not count it; its writers keep it short by age.
    """
    prefix = settings.streams.prefix
    return f"{prefix}.{STATE_STREAM}" if prefix else STATE_STREAM


def once_prefix(settings: Settings) -> str:
    """Where stages keep their "input settled" keys in the broker: beside the streams, under the same prefix.

    Under the prefix so that a Redis ACL pattern on it (``~vp.*``) covers them as it covers the streams.
    """
    prefix = settings.streams.prefix
    return f"{prefix}.once." if prefix else "once."
