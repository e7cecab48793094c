"""Kafka topics and produce calls, blocking (the broker runs them in its thread pool).

Topic administration (list, create and wait until every partition is led, delete and wait until gone) and the
produce-and-confirm of a batch live here, apart from the broker's mapping of the contract onto groups and
offsets (``kafka.py``). A produce the brokers refuse for want of in-sync replicas is ``BrokerFull``, not a
dead broker: ingress turns it into backpressure and a stage retries its settle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from visionpipe.broker.base import BrokerError, BrokerFull
from visionpipe.broker.kafka_common import raise_for
from visionpipe.broker.kafka_config import DELIVERY_TIMEOUT_MS
from visionpipe.broker.kafka_offsets import REQUEST_TIMEOUT_S
from visionpipe.broker.security import redact_url

if TYPE_CHECKING:
    from visionpipe.settings import Settings

# Delivery errors that may mean "too few in-sync replicas": the producer retries NOT_ENOUGH_REPLICAS until the
# message times out, so the timeout is what it reports.
SHORT_OF_REPLICAS = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND}
)
# How often a wait for a topic to appear or go looks again.
TOPIC_POLL_S = 0.05


class TopicAdmin:
    def __init__(self, admin: AdminClient, url: str, settings: Settings) -> None:
        self.admin, self.url, self.settings = admin, url, settings

    def topics(self, led: bool = False) -> dict[str, int]:
        """Topic -> partitions; ``led``: only topics whose every partition has a leader (Kafka creates a topic's
        metadata first and its partitions' logs on their brokers after: a read before that is refused)."""
        try:
            md = self.admin.list_topics(timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise_for(exc.args[0], self.url, "metadata")
            raise
        return {
            name: len(t.partitions)
            for name, t in md.topics.items()
            if t.error is None and not (led and any(p.leader < 0 or p.error is not None for p in t.partitions.values()))
        }

    def partitions(self, stream: str) -> list[TopicPartition]:
        return [TopicPartition(stream, p) for p in range(self.topics().get(stream, 0))]

    def create(self, stream: str, partitions: int | None = None) -> None:
        b = self.settings.broker
        config = {"max.message.bytes": str(b.kafka_max_message_bytes)}
        if b.kafka_min_insync_replicas is not None:
            config["min.insync.replicas"] = str(b.kafka_min_insync_replicas)
        # -1 is the cluster's default.replication.factor (KIP-464).
        topic = NewTopic(
            stream, partitions or b.kafka_partitions, replication_factor=b.kafka_replication_factor, config=config
        )
        for fut in self.admin.create_topics([topic], request_timeout=REQUEST_TIMEOUT_S).values():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise_for(exc.args[0], self.url, f"create topic {stream}")
        self._wait_for(lambda topics: stream in topics, f"topic {stream} to appear", led=True)

    def delete(self, stream: str) -> None:
        for fut in self.admin.delete_topics([stream], request_timeout=REQUEST_TIMEOUT_S).values():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise_for(exc.args[0], self.url, f"delete topic {stream}")
        self._wait_for(lambda topics: stream not in topics, f"topic {stream} to go")

    def _wait_for(self, ready: Callable[[dict[str, int]], bool], what: str, led: bool = False) -> None:
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while not ready(self.topics(led)):
            if time.monotonic() > deadline:
                raise BrokerError(f"kafka {redact_url(self.url)}: timed out waiting for {what}")
            time.sleep(TOPIC_POLL_S)

    def short_of_replicas(self, stream: str) -> dict[int, list[int]]:
        """Partitions of ``stream`` with fewer in-sync replicas than ``min.insync.replicas`` asks; {} if unknown."""
        need = self.settings.broker.kafka_min_insync_replicas or 1
        try:
            md = self.admin.list_topics(stream, timeout=REQUEST_TIMEOUT_S).topics[stream]
        except (KafkaException, KeyError):
            return {}
        return {p: m.isrs for p, m in md.partitions.items() if len(m.isrs) < need}


def produce(
    producer: Producer, admin: TopicAdmin, stream: str, messages: Sequence[bytes], keys: Sequence[str | None]
) -> None:
    """Produce ``messages`` and wait for every delivery report: "published" means the brokers have them."""
    errors: list[KafkaError] = []
    outstanding = [len(messages)]

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        outstanding[0] -= 1
        if err is not None:
            errors.append(err)

    for key, data in zip(keys, messages, strict=True):
        while True:
            try:
                producer.produce(stream, value=data, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka send some, then retry
                producer.poll(0.05)
            except KafkaException as exc:
                raise_for(exc.args[0], admin.url, f"publish to {stream}")
    deadline = time.monotonic() + DELIVERY_TIMEOUT_MS / 1000 + 5
    while outstanding[0] > 0 and time.monotonic() < deadline:
        producer.flush(0.1)
    if errors:
        _publish_failed(admin, stream, errors[0])
    if outstanding[0] > 0:
        raise BrokerError(f"kafka {redact_url(admin.url)}: {outstanding[0]} messages to {stream} unconfirmed")


def _publish_failed(admin: TopicAdmin, stream: str, err: KafkaError) -> None:
    """Raise for a failed delivery: BrokerFull where the topic has fewer in-sync replicas than it needs.

    The brokers answer such a write NOT_ENOUGH_REPLICAS, which the producer retries until the message
    times out: the write is refused, not lost, and goes through once replicas are back.
    """
    if err.code() in SHORT_OF_REPLICAS:
        short = admin.short_of_replicas(stream)
        if short or err.code() != KafkaError._MSG_TIMED_OUT:
            need = admin.settings.broker.kafka_min_insync_replicas or 1
            raise BrokerFull(
                f"kafka {redact_url(admin.url)} refused a publish to {stream}: NOT_ENOUGH_REPLICAS (in-sync "
                f"replicas per partition {short}, min.insync.replicas {need}); retry once brokers are back"
            )
    raise_for(err, admin.url, f"publish to {stream}")
