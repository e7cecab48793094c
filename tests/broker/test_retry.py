"""Connecting at start-up: a URL no backend takes is refused at once; nobody answering is said within the
deadline, in one line that names the address and what to check, without the client library's own noise."""

from __future__ import annotations

import logging
import time

import pytest

from tests.servers import free_port
from visionpipe.broker import BrokerUnreachable, check_url, connect
from visionpipe.broker.retry import unreachable
from visionpipe.settings import load_settings


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://x", "unknown scheme 'http'"),
        ("redis://", "names no host"),
        ("redis://localhost:99999/0", "port '99999' is not a port number"),
        ("kafka://a:9092,:9093", "':9093' names no host"),
        ("rediss://user:secret@host:x/0", "port 'x' is not a port number"),
    ],
)
def test_urls_no_backend_can_use_are_refused_in_one_line(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        check_url(url)
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["memory://", "redis://h:6379/0", "rediss://u:p@h/0", "kafka://a:1,b:2", "redis://[::1]:1"]
)
def test_urls_a_backend_takes_pass(url: str) -> None:
    check_url(url)


@pytest.mark.parametrize("scheme", ["redis", "kafka"])
async def test_nobody_answering_is_said_within_the_deadline(scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}" + ("/0" if scheme == "redis" else "")
    settings = load_settings(broker={"connect_timeout_s": 2, "connect_retries": 100})
    caplog.set_level(logging.INFO)
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable) as info:
        await connect(url, settings)
    assert time.monotonic() - t0 < 4
    message = str(info.value)
    assert message.startswith(f"cannot reach the broker at {url} (no answer in 2 s; last error: ")
    assert "VISIONPIPE_BROKER__CONNECT_TIMEOUT_S" in message and "\n" not in message
    assert ("redis-cli -h 127.0.0.1 -p" in message) == (scheme == "redis")
    # Each try is one INFO line of ours; librdkafka's own "connection refused" lines are held back.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert any(r.getMessage() == "broker not ready, retrying" for r in caplog.records) or scheme == "kafka"


def test_a_tls_server_that_cuts_us_off_is_named_as_a_possible_tls_refusal() -> None:
    """Under load a server refusing our certificate resets the connection before its alert is read: the final
    line still points at TLS (only for rediss://, and only for a cut-off, not for silence)."""
    reset = "Error 104 while writing to socket. Connection reset by peer."
    assert "TLS to h may have been refused" in unreachable("rediss://h:1", "10 s", reset)
    assert "TLS to" not in unreachable("redis://h:1", "10 s", reset)
    assert "TLS to" not in unreachable("rediss://h:1", "10 s", "Timeout connecting to server")
