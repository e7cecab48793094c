"""Kafka settles as transactions: a prefix's outputs and the commit of its offsets become visible together or not
at all (consume-process-produce, KIP-98 and KIP-447), so a stage killed between the two doubles nothing.

One transactional producer per group member, ``transactional.id`` = the member's group id and consumer name:
a member restarted under the same name fences its predecessor and aborts what that one left open; a member
that never comes back has its open transaction aborted by the brokers after ``transaction.timeout.ms``.
Readers use read_committed (librdkafka's default), so they never see an aborted output.

A stage makes its producer when it starts (``KafkaBroker.prepare``), so a restarted stage fences its predecessor
at once, before that one's open transaction holds back the readers of its partitions for long. The group also
checks the generation of the offsets a transaction sends (KIP-447): a zombie that lost its partitions cannot
commit, whatever its transactional.id. Proven on Apache Kafka with kill -9s, a zombie and rebalances
(tests/reliability/test_kafka_exactly_once.py).

Off by default (``broker.kafka_transactions``) because Tansu, the Kafka-protocol broker that starts in
milliseconds for tests, recovers none of a killed producer's transactions (measured with Tansu 0.6: with a new
transactional.id the open transaction is never aborted and blocks read_committed readers of its partitions for
ever; with the same id, the successor's next commit or abort makes the dead one's records visible). Turn it on
with Apache Kafka, where both recoveries are part of the protocol.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from visionpipe.broker.base import BrokerError, Output, wire
from visionpipe.broker.kafka_common import raise_for
from visionpipe.broker.kafka_member import Member
from visionpipe.broker.security import redact_url

log = logging.getLogger("visionpipe.broker.kafka")

# Init, begin, produce, offsets, commit: each a round trip or two on a healthy cluster.
TXN_TIMEOUT_S = 10.0
# How long the brokers keep a dead producer's transaction open before aborting it (it blocks read_committed
# readers of its partitions meanwhile): well beyond one settle, far below librdkafka's 60 s default.
TRANSACTION_TIMEOUT_MS = 15_000
# librdkafka (2.16) does not bound send_offsets_to_transaction by its timeout: when the
# group's coordinator was on a broker that has since left the cluster's metadata, the call waits for some other
# broker's connection to change state, which may never happen. Past its own timeout and this grace, the
# call is given up and so is its producer: the next settle makes a new one under the same transactional.id, which
# fences the wedged one and aborts its open transaction, and the settle is retried.
SEND_OFFSETS_GRACE_S = 5.0
# The wait for that call is taken in steps, each counted at most twice its length: a process stopped meanwhile
# (SIGSTOP, a paused container) does not find the call "late" the moment it resumes.
WAIT_STEP_S = 0.5


# The group refused the transaction's offsets: this member's generation is old (a rebalance it has not served
# yet) or it was dropped from the group (a session timeout, say, while a broker died).
GROUP_CODES = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
    }
)


class Transactions:
    """The transactional producers of one KafkaBroker, one per member, made on first use."""

    def __init__(self, producer_conf: dict[str, Any], url: str) -> None:
        self._conf, self.url = producer_conf, url
        self._producers: dict[int, Producer] = {}
        self._lock = threading.Lock()

    def producer(self, member: Member) -> Producer:
        """The member's transactional producer, made and initialised on first use: that fences any predecessor
        under the same transactional.id and aborts what it left open."""
        with self._lock:
            producer = self._producers.get(id(member))
            if producer is None:
                txn_id = f"{member.group_id}.{member.name}"
                conf = {**self._conf, "transactional.id": txn_id, "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS}
                # librdkafka requires a message to time out within its transaction.
                conf["message.timeout.ms"] = min(
                    int(conf.get("message.timeout.ms", TRANSACTION_TIMEOUT_MS)), TRANSACTION_TIMEOUT_MS
                )
                producer = Producer(conf)
                try:
                    producer.init_transactions(TXN_TIMEOUT_S)
                except KafkaException as exc:
                    raise_for(exc.args[0], self.url, f"init transactions as {txn_id}")
                self._producers[id(member)] = producer
            return producer

    def settle(self, member: Member, outputs: Sequence[Output], commits: Sequence[TopicPartition]) -> None:
        """Publish ``outputs`` and commit ``commits`` in one transaction; the member then forgets what it covers."""
        producer = self.producer(member)
        try:
            producer.begin_transaction()
            for out in outputs:
                while True:
                    try:
                        producer.produce(out.stream, value=wire(out.data), key=out.key)
                        break
                    except BufferError:
                        producer.poll(0.05)
            self._send_offsets(member, producer, commits)
            producer.commit_transaction(TXN_TIMEOUT_S)
        except KafkaException as exc:
            self._recover(member, producer, exc)
        member.forget(commits)

    def _send_offsets(self, member: Member, producer: Producer, commits: Sequence[TopicPartition]) -> None:
        """``send_offsets_to_transaction``, in a thread of its own so that a call librdkafka never returns from
        costs a thread and a producer, not the settle: that member's producer is dropped, the settle fails."""
        metadata = member.consumer.consumer_group_metadata()
        outcome: list[KafkaException | None] = []

        def call() -> None:
            try:
                producer.send_offsets_to_transaction(list(commits), metadata, TXN_TIMEOUT_S)
                outcome.append(None)
            except KafkaException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=call, name="kafka-send-offsets", daemon=True)
        thread.start()
        waited = 0.0
        while thread.is_alive() and waited < TXN_TIMEOUT_S + SEND_OFFSETS_GRACE_S:
            t0 = time.monotonic()
            thread.join(WAIT_STEP_S)
            waited += min(time.monotonic() - t0, 2 * WAIT_STEP_S)
        if outcome:
            if outcome[0] is not None:
                raise outcome[0]
            return
        with self._lock:  # left to its thread, which holds the last reference; never flushed or reused
            self._producers.pop(id(member), None)
        log.warning("send_offsets_to_transaction hung; its producer is replaced", extra={"waited_s": round(waited)})
        raise BrokerError(
            f"kafka {redact_url(self.url)}: offsets not added to the transaction within {waited:.0f}s "
            "(the group's coordinator moved); retried with a new transactional producer"
        )

    def _recover(self, member: Member, producer: Producer, exc: KafkaException) -> None:
        err = exc.args[0]
        if err.txn_requires_abort():
            try:
                producer.abort_transaction(TXN_TIMEOUT_S)
            except KafkaException as again:
                log.warning("abort failed", extra={"error": str(again)})
            if err.code() in GROUP_CODES:  # our generation is old: rejoin, and the retry is sent with the new one
                member.rejoin()
        elif err.fatal():  # fenced by a successor, or the producer is unusable: the next settle makes a new one
            with self._lock:
                self._producers.pop(id(member), None)
        raise BrokerError(f"kafka {redact_url(self.url)}: transaction failed: {err}") from exc

    def drop(self, member: Member) -> None:
        """Forget a member that left (its successor's producer, same transactional.id, fences this one)."""
        with self._lock:
            self._producers.pop(id(member), None)

    def close(self) -> None:
        with self._lock:
            producers = list(self._producers.values())
            self._producers.clear()
        for producer in producers:
            producer.flush(1.0)
