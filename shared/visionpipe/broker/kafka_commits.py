"""A member's commits: deliveries settled out of order become Kafka's "everything below is done", published first.

Kafka commits one offset per partition, "everything below is done", while stages settle deliveries one by one and
out of order. Each delivery stays :class:`Open` until every delivery below it in its partition is settled; then the
prefix's outputs are published and its offset committed. A commit the group refuses (a rebalance bumped its
generation) is made again after the next poll, and a partition's tail past records no stage sees (transaction
markers, aborted records) is committed too, or the partition would show lag for ever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from visionpipe.broker.base import Output

log = logging.getLogger("visionpipe.broker.kafka")


@dataclass
class Open:
    """A delivery this member handed out and has not committed past."""

    msg: Message
    since: float  # monotonic time of the last hand-out
    attempts: int = 1
    acked: bool = False
    outputs: tuple[Output, ...] = ()  # settled, waiting to be published with the commit that covers this offset


class Commits:
    """The commit half of a group member (``kafka_member.Member``): what is open, settled, committed, deferred."""

    stream: str
    lock: threading.Lock
    consumer: Consumer
    open: dict[int, dict[int, Open]]  # partition -> {offset: delivery}, in offset order
    in_hand: tuple[int, int] | None
    deferred: dict[int, int]  # partition -> offset a commit refused during a rebalance, to make again
    committed: dict[int, int]  # partition -> the last offset this member committed there
    committing: dict[int, int]  # partition -> an asynchronous commit's offset, not yet answered

    def mark(self, settled: Sequence[tuple[int, int, tuple[Output, ...]]]) -> int:
        """Mark deliveries settled, keeping their outputs until a commit covers them; returns how many with
        outputs were no longer held here (settled before, or their partition revoked: the new owner redoes them)."""
        dropped = 0
        with self.lock:
            for p, o, outputs in settled:
                d = self.open.get(p, {}).get(o)
                if d is None or d.acked:
                    dropped += bool(outputs)
                    continue
                d.acked, d.outputs = True, outputs
        return dropped

    def committable(self) -> tuple[list[Output], list[TopicPartition]]:
        """The outputs of each partition's settled prefix, in offset order, and the commit that covers them.

        Commits are "everything below is done", so an output settled past an unsettled delivery waits here:
        published now, it would be published again when a crash makes the commit's new owner redo it.
        """
        outputs: list[Output] = []
        commits = []
        with self.lock:
            for p, pending in self.open.items():
                done = None
                for o, d in pending.items():
                    if not d.acked:
                        break
                    outputs += d.outputs
                    done = o
                if done is not None:
                    commits.append(TopicPartition(self.stream, p, done + 1))
        return outputs, commits

    def commit(self, commits: Sequence[TopicPartition]) -> None:
        """Commit ``commits`` synchronously (their outputs are published), then forget the deliveries below them.

        A refused commit is made again after the next poll, for the partitions still ours: a rebalance that
        another member's join started bumps the group's generation, and the brokers refuse this member's commits
        until it has rejoined (in a poll), even for partitions it keeps. Forgotten uncommitted, those deliveries
        would read as lag for ever and be redone after a restart. A partition that moved on is the new owner's
        to redo from the last commit, which is at-least-once.
        """
        if not commits:
            return
        try:
            self.consumer.commit(offsets=list(commits), asynchronous=False)
        except KafkaException as exc:
            log.info("commit refused; again after the next poll", extra={"stream": self.stream, "error": str(exc)})
            self._defer(commits)
            return
        self.forget(commits)

    def _defer(self, commits: Sequence[TopicPartition]) -> None:
        with self.lock:
            for tp in commits:
                for o, d in self.open.get(tp.partition, {}).items():
                    if o < tp.offset:
                        d.outputs = ()  # published: a later settle must not publish them again
                self.deferred[tp.partition] = max(self.deferred.get(tp.partition, 0), tp.offset)

    def catch_up(self) -> None:
        """After a poll: make the commits a rebalance refused, for the partitions still ours, and commit past a
        partition's tail where the reader skipped records no stage sees (transactions' commit markers, aborted
        records): committed at the last delivery, such a partition would show lag for ever. Asynchronous: a
        commit waits for the group's coordinator (a broker may be gone), and the poll that rejoins must not."""
        owned = self.consumer.assignment()
        positions = self.consumer.position(owned) if owned else []
        todo = []
        with self.lock:
            for tp in positions:
                p, target = tp.partition, self.deferred.pop(tp.partition, -1)
                if not self.open.get(p):  # all handed out is committed; a seek leaves no position (-1001)
                    target = max(target, tp.offset)
                if target > max(self.committed.get(p, -1), self.committing.get(p, -1)):
                    todo.append(TopicPartition(self.stream, p, target))
                    self.committing[p] = target
            self.deferred.clear()
        if todo:
            self.consumer.commit(offsets=todo, asynchronous=True)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """A commit's answer (served in a poll): what went through is forgotten, the rest is made again later."""
        done = [tp for tp in partitions if err is None and tp.error is None]
        with self.lock:
            for tp in partitions:
                self.committing.pop(tp.partition, None)
                if tp not in done and tp.partition in self.open:
                    self.deferred[tp.partition] = max(self.deferred.get(tp.partition, 0), tp.offset)
        self.forget(done)

    def forget(self, commits: Sequence[TopicPartition]) -> None:
        """Drop the deliveries below ``commits``: committed (by us, or in a transaction)."""
        with self.lock:
            for tp in commits:
                if self.deferred.get(tp.partition, tp.offset) <= tp.offset:
                    self.deferred.pop(tp.partition, None)
                self.committed[tp.partition] = max(self.committed.get(tp.partition, -1), tp.offset)
                pending = self.open.get(tp.partition, {})
                for o in [o for o in pending if o < tp.offset]:
                    del pending[o]
                if self.in_hand is not None and self.in_hand[0] == tp.partition and self.in_hand[1] < tp.offset:
                    self.in_hand = None
