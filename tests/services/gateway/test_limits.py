"""Size and time limits, seen from a raw socket: what a slow, huge or malicious client gets."""

from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import pytest

from tests.services.gateway.helpers import Live, gateway_settings, jpeg, serving

LIMIT = 1_000_000


@pytest.fixture
async def live(ns: str):
    settings = gateway_settings(
        ns,
        limits={"max_image_bytes": LIMIT},
        gateway={"body_chunk_timeout_s": 0.5, "body_timeout_s": 1.5, "header_timeout_s": 1.0, "max_header_bytes": 8192},
    )
    async with serving(settings, stages=False) as running:
        yield running


def head(extra: str) -> bytes:
    return f"POST /v1/detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n{extra}\r\n".encode()


async def answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """What the server sent before it closed (or the timeout)."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


async def connect(live: Live) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", live.server.port)


async def test_declared_length_over_the_limit_is_refused_before_the_body(live: Live) -> None:
    reader, writer = await connect(live)
    writer.write(head(f"Content-Length: {100 * LIMIT}\r\n"))  # 100 MB announced, nothing sent
    t0 = time.monotonic()
    data = await answer(reader)
    assert data.startswith(b"HTTP/1.1 413") and time.monotonic() - t0 < 1.0
    assert b"connection: close" in data.lower() and b'"too_large"' in data
    writer.close()


async def test_a_chunked_body_past_the_limit_is_cut_off(live: Live) -> None:
    reader, writer = await connect(live)
    writer.write(head("Transfer-Encoding: chunked\r\n"))
    chunk = b"\0" * 65536
    try:
        for _ in range(40):  # 2.6 MB against a 1 MB limit
            writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    assert (await answer(reader)).startswith(b"HTTP/1.1 413")
    writer.close()


async def test_a_stalled_body_is_408_after_the_chunk_timeout(live: Live) -> None:
    reader, writer = await connect(live)
    writer.write(head("Content-Length: 100000\r\n") + b"\xff\xd8" + b"\0" * 1000)
    t0 = time.monotonic()
    data = await answer(reader)
    assert data.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in data
    assert 0.4 < time.monotonic() - t0 < 1.5
    writer.close()


async def test_a_trickled_body_is_408_at_the_total_deadline(live: Live) -> None:
    """One byte every 0.2 s never trips the 0.5 s gap limit; the 1.5 s deadline for the whole body does."""
    reader, writer = await connect(live)
    writer.write(head("Content-Length: 100000\r\n"))
    t0 = time.monotonic()
    reading = asyncio.create_task(answer(reader, 6.0))
    try:
        while not reading.done() and time.monotonic() - t0 < 5:
            writer.write(b"\0")
            await writer.drain()
            await asyncio.sleep(0.2)
    except ConnectionError:
        pass
    data = await reading
    elapsed = time.monotonic() - t0
    # No lingering close in uvicorn: a client still sending may get a reset that swallows the 408.
    assert data.startswith(b"HTTP/1.1 408") or data == b"", data[:100]
    assert 1.2 < elapsed < 3.0, elapsed
    writer.close()


async def test_a_partial_request_head_is_closed_after_the_header_timeout(live: Live) -> None:
    reader, writer = await connect(live)
    writer.write(b"POST /v1/detect HTTP/1.1\r\nHost: t\r\n")
    t0 = time.monotonic()
    assert await answer(reader) == b""
    assert 0.8 < time.monotonic() - t0 < 2.5
    writer.close()


async def test_an_oversized_head_is_400(live: Live) -> None:
    reader, writer = await connect(live)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert (await answer(reader)).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_keep_alive_survives_the_guards_and_a_client_sees_413(live: Live) -> None:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{live.server.port}") as s:
        for _ in range(3):
            async with s.post("/v1/requests", data=jpeg(), headers={"Content-Type": "image/jpeg"}) as r:
                assert r.status == 202
        await asyncio.sleep(0.6)  # idle between requests on the kept-alive connection: not a head timeout
        async with s.get("/healthz") as r:
            assert r.status == 200
        big = io.BytesIO(b"\0" * (2 * LIMIT))
        async with s.post("/v1/detect", data=big, headers={"Content-Type": "image/jpeg"}) as r:
            assert r.status == 413 and (await r.json())["error"] == "too_large"
