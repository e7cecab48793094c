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
