"""Credentials and TLS for the server backends, in one place.

Why one module: a password can arrive in three ways (the URL, the
``broker.password`` setting, a ``password_file`` mounted from a secret), TLS
in two (the ``rediss://`` scheme or Kafka's security protocol), and every log
line or error that names a broker must show the URL without its password. Keeping
the precedence rules and the redaction here means each backend gets the same
answers and a test can check them without a server.

Precedence: settings override the URL, so a deployment can keep a password-free
URL in plain config and put the secret in an environment variable or a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from visionpipe.settings import Settings

REDACTED = "***"
# Loopback hosts, where a password sent without TLS never leaves the machine.
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class BrokerAuthError(RuntimeError):
    """Not retryable: the broker refused our credentials or our TLS setup. Fix config; retrying cannot help."""


def redact_url(url: str) -> str:
    """``url`` with any password replaced, safe for logs, errors, reprs and health output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal loses its brackets in .hostname
        host = f"[{host}]"
    netloc = f"{user}:{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def credentials(url: str, settings: Settings) -> tuple[str | None, str | None]:
    """(username, password): settings first, then the URL's userinfo."""
    parts = urlsplit(url)
    username = settings.broker.username or (unquote(parts.username) if parts.username else None)
    password = settings.broker_password()
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    return username, password


def plaintext_password_warning(url: str, settings: Settings) -> str | None:
    """A warning when a password would cross the network in clear text, else None."""
    parts = urlsplit(url)
    _, password = credentials(url, settings)
    if password is None or (parts.hostname or "") in LOOPBACK:
        return None
    if parts.scheme == "redis":
        return f"password sent without TLS to {parts.hostname}; use rediss:// outside a trusted network"
    if parts.scheme == "kafka" and settings.broker.kafka_security_protocol in (None, "PLAINTEXT", "SASL_PLAINTEXT"):
        return f"password sent without TLS to {parts.hostname}; use kafka_security_protocol=SASL_SSL"
    return None


def redis_tls_kwargs(url: str, settings: Settings) -> dict[str, Any]:
    """redis-py SSLConnection arguments for ``rediss://``; empty for plain ``redis://``."""
    if urlsplit(url).scheme != "rediss":
        return {}
    b = settings.broker
    kwargs: dict[str, Any] = {
        "ssl_cert_reqs": "required" if b.tls_verify else "none",
        "ssl_check_hostname": b.tls_verify,
    }
    if b.tls_ca_file is not None:
        kwargs["ssl_ca_certs"] = str(b.tls_ca_file)
    # A client certificate is mutual TLS (redis-server --tls-auth-clients yes).
    if b.tls_cert_file is not None:
        kwargs["ssl_certfile"] = str(b.tls_cert_file)
    if b.tls_key_file is not None:
        kwargs["ssl_keyfile"] = str(b.tls_key_file)
    return kwargs


def kafka_bootstrap(url: str) -> str:
    """``kafka://h1:9092,h2:9092/...`` -> ``h1:9092,h2:9092`` (userinfo dropped)."""
    netloc = urlsplit(url).netloc
    return netloc.rsplit("@", 1)[-1]


def kafka_url_overrides(url: str) -> dict[str, str]:
    """librdkafka properties given as URL query parameters, e.g. ``kafka://h:9092?linger.ms=5``.

    Lets a deployment or a test tune the client without a new setting for each
    of librdkafka's hundreds of properties. Credentials are refused here so that
    they are never in a URL that gets logged.
    """
    out = dict(parse_qsl(urlsplit(url).query))
    for key in out:
        if "password" in key or "secret" in key:
            raise ValueError(f"put {key} in the broker password setting or file, not in the URL")
    return out


def kafka_security_config(url: str, settings: Settings) -> dict[str, Any]:
    """librdkafka security properties: SASL user/password and TLS files from settings."""
    b = settings.broker
    username, password = credentials(url, settings)
    protocol = b.kafka_security_protocol
    if protocol is None:
        protocol = "SASL_PLAINTEXT" if username else "PLAINTEXT"
    conf: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL"):
        if not username or password is None:
            raise ValueError(f"kafka security protocol {protocol} needs broker.username and a password")
        conf["sasl.mechanism"] = b.kafka_sasl_mechanism or "SCRAM-SHA-512"
        conf["sasl.username"] = username
        conf["sasl.password"] = password
    if protocol.endswith("SSL"):
        if b.tls_ca_file is not None:
            conf["ssl.ca.location"] = str(b.tls_ca_file)
        if b.tls_cert_file is not None:
            conf["ssl.certificate.location"] = str(b.tls_cert_file)
        if b.tls_key_file is not None:
            conf["ssl.key.location"] = str(b.tls_key_file)
        conf["enable.ssl.certificate.verification"] = b.tls_verify
        if not b.tls_verify:
            conf["ssl.endpoint.identification.algorithm"] = "none"
    return conf
