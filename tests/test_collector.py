"""The collector hands over everything it read, even when the second of its two reads fails."""

from __future__ import annotations

import contextlib

from visionpipe.broker import BrokerError, Delivery, MemoryBroker
from visionpipe.collector import Collected, Collector
from visionpipe.envelope import Envelope
from visionpipe.settings import load_settings


class DeadReadFails(MemoryBroker):
    """A real in-process broker whose next read of the dead-letter stream fails, as a dropped connection would."""

    def __init__(self, url: str, dead_stream: str) -> None:
        super().__init__(url)
        self.dead_stream, self.failures = dead_stream, 1

    async def consume(self, stream: str, group: str, consumer: str, count: int, timeout_s: float) -> list[Delivery]:
        if stream == self.dead_stream and self.failures:
            self.failures -= 1
            raise BrokerError("connection lost while reading the dead letters")
        return await super().consume(stream, group, consumer, count, timeout_s)


async def test_results_read_before_a_failed_dead_letter_read_are_stored_and_acked(ns: str) -> None:
    settings = load_settings(streams={"prefix": ns})
    broker = DeadReadFails(f"memory://{ns}", settings.streams.name("dead_letter"))
    collector = await Collector(broker, settings, "reader", "r1").open()
    results = settings.streams.name("results")
    await broker.publish(results, [Envelope(f"r{i}").encode() for i in range(3)])
    handed: list[str] = []

    def sink(batch: Collected) -> None:
        handed.extend(env.request_id for env in batch.results)

    for _ in range(3):  # the reader's loop: a failed poll is retried
        with contextlib.suppress(BrokerError):
            await collector.poll(0.05, sink)
    assert handed == ["r0", "r1", "r2"]
    backlog = await broker.backlog(results, "reader")
    assert backlog.total == 0, f"{backlog.pending} results read but never acked: no reader of this group gets them"
