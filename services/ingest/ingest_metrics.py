"""Prometheus series of the ingest service, read from each stream's counters at scrape time.

The counters the API reports and the end-of-stream message carries are the ones exported here: one source,
so a drop can never show in one place and not another. Series of a removed stream disappear with it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from visionpipe.services.ingest.registry import StreamRegistry
from visionpipe.services.ingest.schema import StreamInfo

FRAME_OUTCOMES = ("decoded", "sampled_out", "dropped", "missed", "published")


class IngestCollector(Collector):
    def __init__(self, registry: StreamRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        streams = self.registry.stats()
        frames = CounterMetricFamily(
            "visionpipe_ingest_frames",
            "Frames of each stream by what became of them (dropped: the pipeline was behind a live stream)",
            labels=["stream", "outcome"],
        )
        reconnects = CounterMetricFamily("visionpipe_ingest_reconnects", "Reconnections to a source", labels=["stream"])
        errors = CounterMetricFamily("visionpipe_ingest_errors", "Open, read and decode errors", labels=["stream"])
        corrupt = CounterMetricFamily("visionpipe_ingest_corrupt_packets", "Packets flagged corrupt", labels=["stream"])
        state = GaugeMetricFamily(
            "visionpipe_ingest_stream_state", "1 for the stream's state", labels=["stream", "state"]
        )
        for sid, info in streams.items():
            counts = info.counters
            for outcome in FRAME_OUTCOMES:
                frames.add_metric([sid, outcome], getattr(counts, outcome))
            reconnects.add_metric([sid], counts.reconnects)
            errors.add_metric([sid], counts.errors)
            corrupt.add_metric([sid], counts.corrupt_packets)
            state.add_metric([sid, info.state], 1)
        yield from (frames, reconnects, errors, corrupt, state, _count(streams))


def _count(streams: dict[str, StreamInfo]) -> GaugeMetricFamily:
    g = GaugeMetricFamily("visionpipe_ingest_streams", "Streams registered in this ingest service")
    g.add_metric([], len(streams))
    return g


def ingest_metrics(registry: StreamRegistry) -> CollectorRegistry:
    """A registry of its own (not the global one), as every stage has: tests build many services in one process."""
    reg = CollectorRegistry()
    reg.register(IngestCollector(registry))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
