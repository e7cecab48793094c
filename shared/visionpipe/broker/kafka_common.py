"""What every module of the Kafka backend shares: which broker errors are fatal, and a message as a Delivery."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from visionpipe.broker.base import BrokerError, Delivery
from visionpipe.broker.security import BrokerAuthError, redact_url

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

# Answers that mean "not now" rather than "no": a partition's leadership or a group's coordinator moving to another
# broker (one died), a new leader whose high watermark has not caught up yet, a broker going away or coming back.
# librdkafka flags few of them retriable() on the errors it raises from a plain call, so they are named here.
RETRIABLE_CODES = frozenset(
    {
        KafkaError.OFFSET_NOT_AVAILABLE,  # a new leader's high watermark not yet caught up
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.PREFERRED_LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.NOT_COORDINATOR,  # the group's coordinator moved with its broker
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.CONCURRENT_TRANSACTIONS,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError._DESTROY_BROKER,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError._UNKNOWN_PARTITION,  # a reader whose metadata has not caught up with a new leader
    }
)


def retriable(err: KafkaError) -> bool:
    """Worth asking again shortly: the cluster is moving leaders or coordinators, not refusing."""
    return bool(err.retriable()) or err.code() in RETRIABLE_CODES


def raise_for(err: KafkaError | None, url: str, what: str) -> None:
    """Credentials and TLS problems are fatal (BrokerAuthError); every other broker error is retryable."""
    if err is None:
        return
    if err.code() in AUTH_CODES:
        raise BrokerAuthError(f"kafka {redact_url(url)} refused {what}: {err}")
    raise BrokerError(f"kafka {redact_url(url)} {what}: {err}")


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
