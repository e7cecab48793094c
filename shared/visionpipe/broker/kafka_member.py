"""One Kafka group member seen from our side: its consumer and the deliveries it has not committed past.

Kafka commits are one offset per partition, "everything below is done", while stages ack deliveries one by one and
out of order. A :class:`Member` keeps each delivery open until every delivery below it in its partition is acked,
then commits; and it keeps the messages themselves, so that a delivery a living member left unacked can be handed
out again (``KafkaBroker.reclaim``).

It also counts hand-outs that a crash could be blamed on, in the group's attempts topic (``kafka_attempts.py``):
before the first message at or past a partition's committed offset is handed out, "that offset, handed out once" is
recorded. A new owner that finds the record still pointing at the committed offset knows the last owner died (or
lost the partition) holding it, and delivers the next ``broker.kafka_careful_window`` messages of that partition one
at a time, each counted first: the one that kills the process is then the one charged, and after
``limits.max_retries`` it is dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from visionpipe.broker.base import BrokerError, BrokerStateLost
from visionpipe.broker.kafka_attempts import AttemptCounting, AttemptLedger, Careful
from visionpipe.broker.kafka_commits import Commits, Open
from visionpipe.broker.kafka_common import AUTH_CODES, position, raise_for
from visionpipe.broker.security import redact_url

log = logging.getLogger("visionpipe.broker.kafka")


class Member(Commits, AttemptCounting):
    """One group member: its consumer and the deliveries it has not yet committed, per partition."""

    def __init__(self, conf: dict[str, Any], stream: str, group: str, ledger: AttemptLedger, window: int) -> None:
        self.stream, self.group = stream, group
        self.group_id, self.name = str(conf["group.id"]), str(conf.get("client.id", ""))
        self.lock = threading.Lock()
        self.poll_lock = threading.Lock()
        # partition -> {offset: delivery}, in delivery (= offset) order; acked ones wait for those below them
        self.open: dict[int, dict[int, Open]] = {}
        self.ledger, self.window = ledger, window
        self.assigned: set[int] = set()  # partitions assigned and not yet read from: their first message is the head
        self.careful: dict[int, Careful] = {}
        self.recorded: dict[int, int] = {}  # partition -> the head offset its last attempts record names
        self.in_hand: tuple[int, int] | None = None  # the one careful delivery handed out and not yet acked
        self.deferred: dict[int, int] = {}  # partition -> offset a commit refused during a rebalance, to make again
        self.committed: dict[int, int] = {}  # partition -> the last offset this member committed there
        self.committing: dict[int, int] = {}  # partition -> an asynchronous commit's offset, not yet answered
        self.closed = False  # left the group (a rejoin made a new member): a poll still to come reads nothing
        self.consumer = Consumer({**conf, "on_commit": self._on_commit})
        self.consumer.subscribe([stream], on_assign=self._assigned, on_revoke=self._released, on_lost=self._revoked)

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self.lock:
            self.assigned.update(tp.partition for tp in partitions)

    def _released(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Given up in a rebalance, not lost: say so in the attempts topic, so the next owner is not careful."""
        with self.lock:
            heads = {tp.partition: min(self.open.get(tp.partition) or [-1]) for tp in partitions}
        for p, head in heads.items():
            if head >= 0 and self.recorded.get(p) == head:
                try:
                    self.ledger.record(p, head, 0)
                except BrokerError as exc:  # the next owner is careful for nothing: slower, never wrong
                    log.info("attempts not cleared on release", extra={"partition": p, "error": str(exc)})
        self._revoked(consumer, partitions)

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member now reads these from the committed offset: our open deliveries there are theirs again.
        with self.lock:
            for tp in partitions:
                self.open.pop(tp.partition, None)
                self.deferred.pop(tp.partition, None)
                self.committed.pop(tp.partition, None)
                self.committing.pop(tp.partition, None)
                self.careful.pop(tp.partition, None)
                self.recorded.pop(tp.partition, None)
                self.assigned.discard(tp.partition)
                if self.in_hand is not None and self.in_hand[0] == tp.partition:
                    self.in_hand = None

    def poll(self, count: int, timeout_s: float, url: str, abandoned: threading.Event) -> list[Message]:
        """Up to ``count`` messages; gives them back (rewinds) if the caller stopped waiting meanwhile."""
        with self.poll_lock:  # one poll at a time, so a rewind lands before the next poll reads
            if self.closed:
                return []
            msgs = self._poll(count, timeout_s, url)
            if abandoned.is_set():
                self.rewind(msgs)
                return []
            self.catch_up()
            return msgs

    def _poll(self, count: int, timeout_s: float, url: str) -> list[Message]:
        first = self.consumer.poll(max(timeout_s, 0.0))
        if first is None:
            return []
        msgs = [first]
        if count > 1:
            msgs += self.consumer.consume(count - 1, 0)
        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() in AUTH_CODES or err.fatal():
                raise_for(err, url, f"consume from {self.stream}")
            elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise BrokerStateLost(f"kafka {redact_url(url)}: {self.stream} is gone: {err}", self.stream)
            else:
                log.warning("consume error", extra={"stream": self.stream, "error": str(err)})
        try:
            return self._hand_out(good)
        except BrokerError:  # an attempts record unreadable or unwritten: these are read again by the next poll
            self.rewind(good)
            raise

    def _hand_out(self, msgs: list[Message]) -> list[Message]:
        """The messages to hand out now, each registered open and, where a crash could be blamed on it, counted.

        A careful partition hands out one message while none is in hand; the rest of its messages in
        this fetch are sought back, to be read again once that one is acked.
        """
        out: list[Message] = []
        held_back: dict[int, int] = {}
        # A rebalance served inside this poll may have revoked a partition after its first message came back.
        owned = {tp.partition for tp in self.consumer.assignment()} if msgs else set()
        for m in msgs:
            p, o = position(m)
            if p in held_back or p not in owned:
                continue
            attempts = self._count(p, o)
            if attempts is None:
                held_back[p] = o
                continue
            with self.lock:
                self.open.setdefault(p, {})[o] = Open(m, time.monotonic(), attempts)
            out.append(m)
        for p, o in held_back.items():
            try:
                self.consumer.seek(TopicPartition(self.stream, p, o))
            except KafkaException as exc:  # revoked meanwhile: the new owner reads from the commit
                log.debug("hold-back seek skipped", extra={"partition": p, "error": str(exc)})
        return out

    def attempts(self, m: Message) -> int:
        p, o = position(m)
        with self.lock:
            d = self.open.get(p, {}).get(o)
            return d.attempts if d is not None else 1

    def touch(self, offsets: Sequence[tuple[int, int]]) -> None:
        now = time.monotonic()
        with self.lock:
            for p, o in offsets:
                d = self.open.get(p, {}).get(o)
                if d is not None:
                    d.since = now

    def rewind(self, msgs: list[Message]) -> None:
        """Undo deliveries nobody will see (the consume was cancelled): read them again."""
        first: dict[int, int] = {}
        for m in msgs:
            p, o = position(m)
            first[p] = min(first.get(p, o), o)
        with self.lock:
            for p, offset in first.items():
                pending = self.open.get(p, {})
                for o in [o for o in pending if o >= offset]:
                    del pending[o]
                if self.in_hand is not None and self.in_hand[0] == p and self.in_hand[1] >= offset:
                    self.in_hand = None
                try:
                    self.consumer.seek(TopicPartition(self.stream, p, offset))
                except KafkaException as exc:  # revoked meanwhile: the new owner reads from the commit
                    log.debug("rewind skipped", extra={"partition": p, "error": str(exc)})

    def rejoin(self) -> None:
        """Serve a rebalance now: librdkafka applies one (a new generation, or partitions lost) only inside a poll,
        and a transaction whose offsets an old generation sent is refused until then. A stage whose work in
        flight all waits on that settle would poll no more: this poll hands nothing out (a message is sought back).
        """
        with self.poll_lock:
            m = None if self.closed else self.consumer.poll(0)
            if m is not None and m.error() is None:
                try:
                    self.consumer.seek(TopicPartition(self.stream, *position(m)))
                except KafkaException as exc:  # revoked in this poll: its new owner reads it from the commit
                    log.debug("rejoin seek skipped", extra={"error": str(exc)})

    def rewind_if_delivered(self, fut: Future[list[Message]]) -> None:
        if fut.cancelled() or fut.exception() is not None or self.closed:
            return
        with self.poll_lock:
            self.rewind(fut.result())

    def close(self) -> None:
        """Leave the group; waits for a poll still running in another thread (closing under it is unsafe)."""
        with self.poll_lock:
            if not self.closed:
                self.closed = True
                self.consumer.close()

    def pending(self) -> int:
        with self.lock:
            return sum(1 for part in self.open.values() for d in part.values() if not d.acked)

    def take_idle(self, min_idle_s: float, count: int) -> list[tuple[Message, int]]:
        """Unacked deliveries idle for ``min_idle_s``, handed out again (a failed batch left them)."""
        now = time.monotonic()
        out: list[tuple[Message, int]] = []
        with self.lock:
            for part in self.open.values():
                for d in part.values():
                    if len(out) >= count:
                        break
                    if not d.acked and now - d.since >= min_idle_s:
                        d.since, d.attempts = now, d.attempts + 1
                        out.append((d.msg, d.attempts))
            in_hand = self.in_hand
        for m, attempts in out:  # a careful delivery's count is kept where a restart finds it
            p, o = position(m)
            if (p, o) == in_hand and p in self.careful:
                self.ledger.record(p, o, attempts)
                self.careful[p].counts = {o: attempts}
        return out
