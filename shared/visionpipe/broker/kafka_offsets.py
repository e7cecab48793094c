"""Reading offsets on Kafka: what a group has left (backlog), what a topic holds (length), its oldest or newest entries.

Apache Kafka makes a topic's metadata first and its partitions' logs on their brokers after, and a partition
whose leader just moved (a topic made again, a broker killed) answers NOT_LEADER_FOR_PARTITION, or
OFFSET_NOT_AVAILABLE until the new leader's high watermark has caught up, for a moment. Such retriable answers
(``kafka_common.retriable``) are asked again here, with the project's backoff, for up to ``REQUEST_TIMEOUT_S``,
rather than failing a backlog read (and with it the front door's admission check).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from visionpipe.backoff import Backoff
from visionpipe.broker.kafka_common import position, raise_for, retriable

log = logging.getLogger("visionpipe.broker.kafka")

# Metadata, offset and admin calls: a healthy broker answers in milliseconds; past this it is unreachable.
REQUEST_TIMEOUT_S = 10.0
# The first wait before asking again, and the longest: a leader elected or a watermark caught up in well under
# a second is seen at once, one that takes seconds is not asked for in a tight loop.
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 1.0
# One try: a call to a broker that just died waits this long, then the metadata is refreshed and it is asked again.
CALL_TIMEOUT_S = 2.0


class Offsets:
    """One KafkaBroker's readers: a Consumer per group id that never subscribes, for committed and end offsets."""

    def __init__(self, conf: dict[str, Any], url: str, partitions: Callable[[str], list[TopicPartition]]) -> None:
        self._conf, self.url, self._partitions = conf, url, partitions
        self._readers: dict[str, Consumer] = {}
        self._lock = threading.Lock()

    def _reader(self, group_id: str) -> Consumer:
        with self._lock:
            reader = self._readers.get(group_id)
            if reader is None:
                # read_uncommitted: a read_committed client asks for stable offsets (KIP-447), which the brokers
                # hold back while a transaction that commits this group's offsets is open, and a killed stage's
                # stays open until its successor fences it: a backlog read would hang that long.
                conf = {**self._conf, "group.id": group_id, "isolation.level": "read_uncommitted"}
                reader = self._readers[group_id] = Consumer(conf)
            return reader

    def _ask(self, call: Callable[[float], Any], what: str, reader: Consumer | None = None, topic: str = "") -> Any:
        deadline, backoff = time.monotonic() + REQUEST_TIMEOUT_S, Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        while True:
            try:
                return call(min(CALL_TIMEOUT_S, max(0.1, deadline - time.monotonic())))
            except KafkaException as exc:
                err = exc.args[0]
                if not retriable(err) or time.monotonic() > deadline:
                    raise_for(err, self.url, what)
                    raise
                log.debug("asking again", extra={"what": what, "error": str(err)})
            time.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
            if reader is not None:  # a reader that subscribes to nothing refreshes no metadata by itself
                try:
                    reader.list_topics(topic, timeout=REQUEST_TIMEOUT_S)
                except KafkaException as exc:
                    log.debug("metadata refresh failed", extra={"error": str(exc)})

    def watermarks(self, reader: Consumer, tp: TopicPartition) -> tuple[int, int]:
        low, high = self._ask(
            lambda t: reader.get_watermark_offsets(tp, timeout=t, cached=False),
            f"offsets of {tp.topic}[{tp.partition}]",
            reader,
            tp.topic,
        )
        return int(low), int(high)

    def unfinished(self, stream: str, group_id: str) -> int:
        """Messages of ``stream`` past ``group_id``'s committed offsets: end offset − committed, summed."""
        reader = self._reader(group_id)
        parts = self._partitions(stream)
        if not parts:
            return 0
        committed = self._ask(lambda t: reader.committed(parts, timeout=t), f"backlog of {stream}", reader, stream)
        total = 0
        for tp in committed:
            low, high = self.watermarks(reader, tp)
            start = tp.offset if tp.offset >= 0 else low
            total += max(0, high - max(start, low))
        return total

    def length(self, stream: str) -> int:
        reader = self._reader("visionpipe-length")
        total = 0
        for tp in self._partitions(stream):
            low, high = self.watermarks(reader, tp)
            total += high - low
        return total

    def peek(self, stream: str, count: int, newest: bool = False) -> list[Message]:
        """The oldest ``count`` entries of ``stream``; ``newest``: the newest ``count`` of each partition instead,
        oldest first by their timestamps (what ``Broker.tail`` reads: state whose latest word is what counts)."""
        # A throwaway group that never commits: reading leaves no trace on the stages' groups.
        reader = Consumer({**self._conf, "group.id": f"visionpipe-peek-{uuid.uuid4().hex[:8]}"})
        try:
            ends, starts = {}, {}
            for tp in self._partitions(stream):
                low, high = self.watermarks(reader, tp)
                if high > low:
                    ends[tp.partition], starts[tp.partition] = high, max(low, high - count) if newest else low
            reader.assign([TopicPartition(stream, p, starts[p] if newest else OFFSET_BEGINNING) for p in ends])
            # Exactly what is there to read: Consumer.consume waits for all it was asked for, or its whole timeout.
            want = sum(ends[p] - starts[p] for p in ends) if newest else count
            out: list[Message] = []
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while ends and len(out) < want and time.monotonic() < deadline:
                for m in reader.consume(want - len(out), 0.1):
                    if m.error() is None:
                        out.append(m)
                        p, o = position(m)
                        if o + 1 >= ends.get(p, 0):
                            ends.pop(p, None)
            return sorted(out, key=lambda m: m.timestamp()[1])[-count:] if newest else out
        finally:
            reader.close()

    def reset(self) -> None:
        """Close every reader: after a topic is deleted, a reader keeps its old metadata (leader epochs higher than
        a topic made again under the same name starts with), and the brokers refuse its requests as stale."""
        for close in self.closers():
            close()

    def closers(self) -> list[Callable[[], None]]:
        with self._lock:
            readers = list(self._readers.values())
            self._readers.clear()
        return [r.close for r in readers]
