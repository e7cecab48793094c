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


class AttemptCounting:
    """The counting half of a group member (``kafka_member.Member``): each hand-out a crash could be blamed on is
    recorded before it happens, and a partition whose last owner died holding a message is delivered carefully."""

    stream: str
    lock: threading.Lock
    open: dict[int, dict[int, Any]]  # partition -> {offset: open delivery}
    ledger: AttemptLedger
    window: int
    assigned: set[int]
    careful: dict[int, Careful]
    recorded: dict[int, int]
    in_hand: tuple[int, int] | None

    def _count(self, p: int, o: int) -> int | None:
        """Attempts of handing out offset ``o`` of ``p`` now (recorded first where needed); None: not now."""
        if p in self.assigned:  # the first message since assignment sits at the committed offset
            last = self.ledger.last(p)
            self.assigned.discard(p)
            if last is not None and last[0] == o and last[1] >= 1:
                log.warning(
                    "partition %d of %s: its last owner died holding offset %d (handed out %d times): delivering "
                    "the next %d messages one at a time",
                    p,
                    self.stream,
                    o,
                    last[1],
                    self.window,
                )
                self.careful[p] = Careful(o + self.window, {o: last[1]})
        careful = self.careful.get(p)
        if careful is not None and o >= careful.until:
            del self.careful[p]
            careful = None
        if careful is None:
            with self.lock:
                head = min(self.open.get(p) or [o])
            if self.recorded.get(p) != head:
                self.ledger.record(p, head, 1)
                self.recorded[p] = head
            return 1
        if self.in_hand is not None:
            return None
        attempts = careful.counts.get(o, 0) + 1
        self.ledger.record(p, o, attempts)
        careful.counts = {o: attempts}
        self.recorded[p], self.in_hand = o, (p, o)
        return attempts
