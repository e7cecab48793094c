"""Delivery attempts on Kafka that outlive the process: a message that kills its stage is seen failing.

Kafka keeps no per-message delivery count, and a member's own count dies with
it. So a message that crashes the process (a decoder segfault, an OOM kill) is
read again from the committed offset after every restart, for ever, and its
partition is blocked. The fix has two parts:

* **careful delivery**: for the first ``broker.kafka_careful_window`` messages
  of a partition after it is assigned — the only place a killer can be,
  since the previous owner committed up to it — a member hands out one
  message at a time (one per member, across partitions), each counted
  *before* it is handed out. A crash is then charged to the one message in
  hand, never to the innocent messages fetched with it;
* **the attempts topic** (``<group id>.attempts``, one partition per input
  partition) keeps those counts: the last record of partition p says
  "offset o of input partition p was handed out n times". The next owner reads
  it on assignment, so the count survives the restart and, past
  ``limits.max_retries``, the message is dead-lettered like any other.

Commit metadata would hold the count more cheaply (Apache Kafka keeps it), but
Tansu, the Kafka-protocol test broker, drops it (measured: committed metadata
reads back empty), and the same code must count on both.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from visionpipe.broker.base import BrokerError

log = logging.getLogger("visionpipe.broker.kafka")

# Reading one record back: an assign and a fetch, milliseconds on a healthy broker.
READ_TIMEOUT_S = 10.0


def attempts_topic(group_id: str) -> str:
    return f"{group_id}.attempts"


@dataclass
class Careful:
    """A partition's careful stretch: messages below ``until`` are handed out singly and counted."""

    until: int
    counts: dict[int, int]  # offset -> times handed out, as recorded


class AttemptLedger:
    """One group member's view of its attempts topic: read once per assignment, written before each hand-out."""

    def __init__(self, topic: str, producer: Producer, reader_conf: dict[str, Any], url: str) -> None:
        self.topic, self.url = topic, url
        self._producer = producer
        self._reader_conf = reader_conf
        self._lock = threading.Lock()

    def last(self, partition: int) -> tuple[int, int] | None:
        """(offset, count) of the last record for ``partition``, or None when it has none."""
        reader = Consumer({**self._reader_conf, "enable.auto.commit": False})
        try:
            tp = TopicPartition(self.topic, partition)
            low, high = reader.get_watermark_offsets(tp, timeout=READ_TIMEOUT_S, cached=False)
            if high <= low:
                return None
            reader.assign([TopicPartition(self.topic, partition, high - 1)])
            deadline = time.monotonic() + READ_TIMEOUT_S
            while time.monotonic() < deadline:
                m = reader.poll(0.1)
                value = m.value() if m is not None and m.error() is None else None
                if value:
                    offset, count = (int(x) for x in value.split(b":"))
                    return offset, count
            raise BrokerError(f"kafka: could not read {self.topic}[{partition}] back")
        except KafkaException as exc:
            raise BrokerError(f"kafka: reading {self.topic}[{partition}]: {exc}") from exc
        finally:
            reader.close()

    def record(self, partition: int, offset: int, count: int) -> None:
        """Write "handed out ``count`` times" and wait until the broker has it (acks=all): a crash comes after."""
        errors: list[Any] = []
        with self._lock:
            self._producer.produce(
                self.topic,
                value=f"{offset}:{count}".encode(),
                key=str(partition).encode(),
                partition=partition,
                on_delivery=lambda err, _msg: errors.append(err),
            )
            self._producer.flush(READ_TIMEOUT_S)
        if not errors or errors[0] is not None:
            raise BrokerError(f"kafka: counting a delivery in {self.topic} failed: {errors[:1]}")
