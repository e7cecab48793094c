"""What the runtime's tests share: a stage with a trivial body in decode's slot, and settings that act fast."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from visionpipe.envelope import Envelope, Event
from visionpipe.services.runtime.stage import BadInput, BatchStage, Outcome
from visionpipe.settings import Settings, load_settings
from visionpipe.topology import DECODE


class EchoStage(BatchStage):
    """Echoes frames; b"bad" is poison, b"flaky" fails transiently the first ``flaky`` times, b"slow" sleeps."""

    name = DECODE

    def __init__(self, flaky: int = 0, slow_s: float = 0.0) -> None:
        self.flaky = flaky
        self.slow_s = slow_s
        self.calls = 0

    async def start(self) -> None:
        return None

    async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        out: list[Outcome] = []
        for env in envelopes:
            self.calls += 1
            image = env.payload["image"]
            if image == b"slow":
                await asyncio.sleep(self.slow_s)
            if image == b"bad":
                out.append(BadInput("bad on purpose"))
            elif image == b"flaky" and self.flaky > 0:
                self.flaky -= 1
                out.append(RuntimeError("transient on purpose"))
            else:
                child = env.child(echo=image)
                child.stamp(self.name, Event.BATCH_START)
                child.stamp(self.name, Event.COMPUTE_DONE)
                out.append(child)
        return out


def settings_for(ns: str, **service: object) -> Settings:
    return load_settings(
        broker={"url": f"memory://{ns}", "reclaim_idle_s": 0.0},
        streams={"prefix": ns},
        limits={"max_retries": 2},
        service={
            "drain_idle_s": 0.2,
            "reclaim_interval_s": 0.05,
            "consume_timeout_s": 0.02,
            "drain_grace_s": 5.0,
            **service,
        },
    )
