"""Credential precedence, redaction and client security config: no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpipe.broker import connect
from visionpipe.broker.kafka_config import client_configs
from visionpipe.broker.redis_streams import pool_kwargs
from visionpipe.broker.security import (
    credentials,
    kafka_security_config,
    kafka_url_overrides,
    plaintext_password_warning,
    redact_url,
)
from visionpipe.settings import load_settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://app:p%40ss@10.0.0.5:6380/1", "rediss://app:***@10.0.0.5:6380/1"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("kafka://u:pw@[::1]:9092", "kafka://u:***@[::1]:9092"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_settings_override_url_credentials(tmp_path: Path) -> None:
    url = "redis://urluser:urlpass@h:6379/0"
    assert credentials(url, load_settings()) == ("urluser", "urlpass")
    assert credentials(url, load_settings(broker={"username": "u", "password": "p"})) == ("u", "p")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert credentials(url, load_settings(broker={"password_file": str(secret)})) == ("urluser", "from-file")
    kwargs = pool_kwargs(url, load_settings(broker={"password_file": str(secret)}))
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("urluser", "from-file", 0)


def test_rediss_gets_tls_arguments(tmp_path: Path) -> None:
    s = load_settings(broker={"tls_ca_file": str(tmp_path / "ca.crt"), "tls_verify": False})
    kwargs = pool_kwargs("rediss://h:6380/0", s)
    assert kwargs["ssl_ca_certs"] == str(tmp_path / "ca.crt")
    assert kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_check_hostname"] is False
    assert "ssl_ca_certs" not in pool_kwargs("redis://h:6379/0", s), "plain redis:// takes no TLS arguments"


def test_plaintext_password_over_the_network_is_flagged() -> None:
    s = load_settings(broker={"password": "p"})
    assert plaintext_password_warning("redis://127.0.0.1:6379/0", s) is None
    assert "rediss://" in (plaintext_password_warning("redis://redis.prod:6379/0", s) or "")
    assert plaintext_password_warning("rediss://redis.prod:6379/0", s) is None
    assert plaintext_password_warning("redis://redis.prod:6379/0", load_settings()) is None


def test_kafka_sasl_ssl_config(tmp_path: Path) -> None:
    s = load_settings(
        broker={
            "username": "svc",
            "password": "pw",
            "kafka_security_protocol": "SASL_SSL",
            "tls_ca_file": str(tmp_path / "ca.pem"),
        }
    )
    conf = kafka_security_config("kafka://k:9093", s)
    assert conf["security.protocol"] == "SASL_SSL"
    assert (conf["sasl.username"], conf["sasl.password"], conf["sasl.mechanism"]) == ("svc", "pw", "SCRAM-SHA-512")
    assert conf["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert kafka_security_config("kafka://k:9092", load_settings()) == {"security.protocol": "PLAINTEXT"}
    with pytest.raises(ValueError, match="password"):
        kafka_security_config("kafka://k:9092", load_settings(broker={"kafka_security_protocol": "SASL_SSL"}))


def test_kafka_url_options_reach_the_right_client() -> None:
    common, producer, consumer = client_configs("kafka://a:1,b:2?producer.linger.ms=5&client.rack=r1", load_settings())
    assert common["bootstrap.servers"] == "a:1,b:2" and common["client.rack"] == "r1"
    assert producer["linger.ms"] == "5" and "linger.ms" not in consumer
    with pytest.raises(ValueError, match="password"):
        kafka_url_overrides("kafka://a:1?sasl.password=oops")


async def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="amqp"):
        await connect("amqp://h/", load_settings())
