"""librdkafka configuration of the Kafka backend: what every producer and consumer of ours is given, and why."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from visionpipe.broker.security import kafka_bootstrap, kafka_security_config, kafka_url_overrides

if TYPE_CHECKING:
    from visionpipe.settings import Settings

# Longest a fetch waits at the broker for data. Apache Kafka answers a waiting fetch as soon as data
# arrives, but Tansu holds it for the full wait: librdkafka's 500 ms default gave a 130 ms p50 hop at
# 100 msg/s there, 10 ms gives 5 ms. Idle cost: ~100 small fetch requests/s per consumer.
# Override with the URL: kafka://host:9092?consumer.fetch.wait.max.ms=500
FETCH_WAIT_MAX_MS = 10
# Where librdkafka's own log lines go (through our logging, so they are formatted and levelled like ours).
RDKAFKA_LOGGER = "visionpipe.broker.rdkafka"
# How long a publish may wait for delivery reports before it fails as retryable (librdkafka's own default is 300 s).
DELIVERY_TIMEOUT_MS = 30_000


def client_configs(url: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(common, producer, consumer) librdkafka configs; URL query ``producer.x=`` / ``consumer.x=`` go to one."""
    b = settings.broker
    common: dict[str, Any] = {
        "bootstrap.servers": kafka_bootstrap(url),
        "logger": logging.getLogger(RDKAFKA_LOGGER),
        **kafka_security_config(url, settings),
    }
    producer: dict[str, Any] = {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 0,  # batching is the executor's job; measured: linger adds its whole value to p50 at low rates
        "message.max.bytes": b.kafka_max_message_bytes,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
    }
    consumer: dict[str, Any] = {
        # Incremental rebalances: a member joining or leaving moves only the partitions that change owner, and the
        # others keep their uncommitted work instead of all of it being revoked and redone.
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",  # a new group reads the stream from its start, like XGROUP CREATE ... 0
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "session.timeout.ms": b.kafka_session_timeout_ms,
        "heartbeat.interval.ms": b.kafka_heartbeat_ms,
        "fetch.max.bytes": b.kafka_max_message_bytes,
        "max.partition.fetch.bytes": b.kafka_max_message_bytes,
        "receive.message.max.bytes": b.kafka_max_message_bytes + 1024 * 1024,
    }
    for key, value in kafka_url_overrides(url).items():
        if key.startswith("producer."):
            producer[key.removeprefix("producer.")] = value
        elif key.startswith("consumer."):
            consumer[key.removeprefix("consumer.")] = value
        else:
            common[key] = value
    return common, producer, consumer
