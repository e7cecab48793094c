"""One Kafka group member seen from our side: its consumer and the deliveries it has not committed past.

Kafka commits are one offset per partition, "everything below is done", while
stages ack deliveries one by one and out of order. A :class:`Member` keeps each
delivery open until every delivery below it in its partition is acked, then
commits; and it keeps the messages themselves, so that a delivery a living
member left unacked can be handed out again (``KafkaBroker.reclaim``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from visionpipe.broker.base import BrokerError, Delivery
from visionpipe.broker.security import BrokerAuthError, redact_url

log = logging.getLogger("visionpipe.broker.kafka")

AUTH_CODES = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._SSL,
    }
)


def raise_for(err: KafkaError | None, url: str, what: str) -> None:
    """Credentials and TLS problems are fatal (BrokerAuthError); every other broker error is retryable."""
    if err is None:
        return
    if err.code() in AUTH_CODES:
        raise BrokerAuthError(f"kafka {redact_url(url)} refused {what}: {err}")
    raise BrokerError(f"kafka {redact_url(url)} {what}: {err}")


@dataclass
class Open:
    """A delivery this member handed out and has not committed past."""

    msg: Message
    since: float  # monotonic time of the last hand-out
    attempts: int = 1
    acked: bool = False


class Member:
    """One group member: its consumer and the deliveries it has not yet committed, per partition."""

    def __init__(self, conf: dict[str, Any], stream: str, group: str) -> None:
        self.stream, self.group = stream, group
        self.lock = threading.Lock()
        self.poll_lock = threading.Lock()
        # partition -> {offset: delivery}, in delivery (= offset) order; acked ones wait for those below them
        self.open: dict[int, dict[int, Open]] = {}
        self.consumer = Consumer(conf)
        self.consumer.subscribe([stream], on_revoke=self._revoked, on_lost=self._revoked)

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member now reads these from the committed offset: our open deliveries there are theirs again.
        with self.lock:
            for tp in partitions:
                self.open.pop(tp.partition, None)

    def poll(self, count: int, timeout_s: float, url: str, abandoned: threading.Event) -> list[Message]:
        """Up to ``count`` messages; gives them back (rewinds) if the caller stopped waiting meanwhile."""
        with self.poll_lock:  # one poll at a time, so a rewind lands before the next poll reads
            msgs = self._poll(count, timeout_s, url)
            if abandoned.is_set():
                self.rewind(msgs)
                return []
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
            else:
                log.warning("consume error", extra={"stream": self.stream, "error": str(err)})
        with self.lock:
            for m in good:
                p, o = position(m)
                self.open.setdefault(p, {})[o] = Open(m, time.monotonic())
        return good

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
                try:
                    self.consumer.seek(TopicPartition(self.stream, p, offset))
                except KafkaException as exc:  # revoked meanwhile: the new owner reads from the commit
                    log.debug("rewind skipped", extra={"partition": p, "error": str(exc)})

    def rewind_if_delivered(self, fut: Future[list[Message]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        with self.poll_lock:
            self.rewind(fut.result())

    def ack(self, offsets: Sequence[tuple[int, int]]) -> None:
        commits = []
        with self.lock:
            for p, o in offsets:
                pending = self.open.get(p)
                if pending is not None and o in pending:
                    pending[o].acked = True
            for p, _ in set(offsets):
                pending = self.open.get(p, {})
                done = None
                for o in list(pending):
                    if not pending[o].acked:
                        break
                    done = o
                    del pending[o]
                if done is not None:
                    commits.append(TopicPartition(self.stream, p, done + 1))
        if commits:
            try:
                self.consumer.commit(offsets=commits, asynchronous=False)
            except KafkaException as exc:  # partition moved on: the new owner redelivers, which is at-least-once
                log.info("commit refused", extra={"stream": self.stream, "error": str(exc)})

    def close(self) -> None:
        """Leave the group; waits for a poll still running in another thread (closing under it is unsafe)."""
        with self.poll_lock:
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
                        return out
                    if not d.acked and now - d.since >= min_idle_s:
                        d.since, d.attempts = now, d.attempts + 1
                        out.append((d.msg, d.attempts))
        return out


def position(m: Message) -> tuple[int, int]:
    """(partition, offset) of a consumed message, which always has both."""
    p, o = m.partition(), m.offset()
    assert p is not None and o is not None
    return p, o


def to_delivery(stream: str, m: Message, attempts: int = 1) -> Delivery:
    key = m.key()
    p, o = position(m)
    return Delivery(
        stream,
        f"{p}:{o}",
        m.value() or b"",
        key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
        attempts,
    )
