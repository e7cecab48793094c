"""What a Kafka topic holds, read as a downstream reader reads it: read_committed, every partition from its start.

No group, no commit, no de-duplication: the counts are what the pipeline made visible, once or more.
"""

from __future__ import annotations

import time
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.reliability.harness import request_id_of
from visionpipe.broker import DeadLetter

READ_TIMEOUT_S = 30.0


def read_committed(url: str, topic: str, timeout_s: float = READ_TIMEOUT_S) -> list[bytes]:
    """Every committed record's value in ``topic``; aborted ones and transaction markers are skipped."""
    bootstrap = url.removeprefix("kafka://").split("?")[0]
    parts = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10).topics[topic].partitions
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "audit",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {}
        for p in parts:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high > low:
                ends[p] = high
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for m in reader.consume(500, 0.2):
                if m.error() is None:
                    out.append(m.value() or b"")
            # The position passes markers and aborted records too, so it reaches the end offset.
            for tp in reader.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
        assert not ends, f"{topic}: partitions {sorted(ends)} not read to their end in {timeout_s}s (open transaction?)"
        return out
    finally:
        reader.close()


def result_counts(url: str, topic: str) -> Counter[str]:
    """Request id -> how many committed results ``topic`` holds for it."""
    return Counter(request_id_of(v) or "?" for v in read_committed(url, topic))


def dead_reasons(url: str, topic: str) -> dict[str, list[str]]:
    """Request id -> the reasons of every committed dead letter for it."""
    out: dict[str, list[str]] = {}
    for v in read_committed(url, topic):
        record = DeadLetter.decode(v)
        out.setdefault(record.request_id or "?", []).append(record.reason)
    return out


def whereabouts(url: str, streams: list[str], rids: set[str]) -> dict[str, int]:
    """How many records of ``rids`` each stream holds, committed: where a missing request got stuck."""
    out = {}
    for stream in streams:
        try:
            out[stream] = sum(1 for v in read_committed(url, stream, 10.0) if request_id_of(v) in rids)
        except AssertionError as exc:  # a partition not readable to its end: say so instead
            out[stream] = -1
            out[f"{stream} (unreadable)"] = len(str(exc))
    return out
