"""200 bad uploads against ``visionpipe serve gateway`` in its own process: each gets its 4xx with a reason, the
gateway stays up and ready, and its memory stays bounded.

Over Redis with the real decode stage behind it: most bad uploads are refused by the header check at the
gateway, but a truncated JPEG has a valid header, so it is admitted, refused by decode (to the dead letters)
and answered 422 with decode's reason.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from pathlib import Path

import aiohttp
import pytest

from tests.reliability.harness import Processes
from tests.servers import Server
from tests.services.gateway.helpers import GatewayProc, http, jpeg
from tests.services.helpers import env_for, fast_overrides

UPLOADS = 200
HUGE = 100 * 1024 * 1024  # 100 MB, four times the default image limit
# Spooled multipart parts, allocator slack, Python's caches: a leak of the bodies would be far beyond this.
RSS_GROWTH_LIMIT_KIB = 40 * 1024


def bad_upload(i: int) -> tuple[str, bytes, dict[str, str], int, str]:
    """(kind, body, headers, status, code) of the i-th bad upload."""
    good = jpeg(320, 240, seed=i)
    form = (b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b--\r\n', "no file part")
    extra = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        + good
        + b'\r\n--b\r\nContent-Disposition: form-data; name="imgae"\r\n\r\nx\r\n--b--\r\n'
    )
    kinds = [
        ("empty", b"", {"Content-Type": "image/jpeg"}, 422, "bad_image"),
        ("truncated (refused by decode)", good[: len(good) // 3], {"Content-Type": "image/jpeg"}, 422, "bad_image"),
        (
            "not an image",
            b"%PDF-1.4 " + bytes(random.Random(i).randbytes(2000)),
            {"Content-Type": "image/png"},
            422,
            "bad_image",
        ),
        ("wrong type", good, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("bad multipart", b"--b\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=b"}, 422, "bad_multipart"),
        ("form without image", form[0], {"Content-Type": "multipart/form-data; boundary=b"}, 422, "bad_multipart"),
        ("form with another part", extra, {"Content-Type": "multipart/form-data; boundary=b"}, 422, "bad_multipart"),
    ]
    return kinds[i % len(kinds)]


async def raw(port: int, head: bytes, trickle: bool = False) -> bytes:
    """Send a request head (and a trickle of body), return what the server answers before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    if trickle:
        writer.write(b"\xff\xd8")  # then nothing more: a stalled upload
    data = b""
    try:
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                data += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return data


def _head(length: int) -> bytes:
    head = f"POST /v1/detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n"
    return head.encode()


async def storm(proc: GatewayProc) -> dict[str, int]:
    """The 200 uploads; returns how many got each answer."""
    seen: dict[str, int] = {}

    def tally(kind: str, ok: bool) -> None:
        seen[kind if ok else f"{kind}: WRONG ANSWER"] = seen.get(kind, 0) + 1

    async with aiohttp.ClientSession() as s:
        for i in range(UPLOADS - 16):
            kind, body, headers, status, code = bad_upload(i)
            async with s.post(proc.url + "/v1/detect", data=body, headers=headers) as r:
                doc = await r.json(content_type=None)
                tally(kind, r.status == status and doc["error"] == code and bool(doc["detail"]))
        for _ in range(6):  # 100 MB announced: refused before a byte of it is read
            answer = await raw(proc.port, _head(HUGE))
            tally("100 MB declared", answer.startswith(b"HTTP/1.1 413") and b'"too_large"' in answer)
        for _ in range(4):  # 100 MB streamed, no length given: cut off at the limit
            try:
                async with s.post(
                    proc.url + "/v1/detect", data=_chunks(HUGE), headers={"Content-Type": "image/jpeg"}
                ) as r:
                    tally("100 MB streamed", r.status == 413)
            except aiohttp.ClientError:  # no lingering close: the client may see a reset after the early 413
                tally("100 MB streamed (reset)", True)
        answers = await asyncio.gather(*(raw(proc.port, _head(50_000), trickle=True) for _ in range(6)))
        for answer in answers:
            tally("slow body", answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer)
    return seen


async def _chunks(total: int):
    block = io.BytesIO(b"\0" * (1024 * 1024)).getvalue()
    for _ in range(total // len(block)):
        yield block


@pytest.mark.slow
async def test_200_bad_uploads_each_get_a_4xx_and_the_gateway_stays_bounded(
    tmp_path: Path, ns: str, redis_server: Server
) -> None:
    env = env_for(fast_overrides(ns, redis_server.url))
    decode = Processes(env, tmp_path)
    proc = GatewayProc({**env, "VISIONPIPE_GATEWAY__BODY_CHUNK_TIMEOUT_S": "1.0"}, tmp_path).start()
    try:
        decode.start("decode").wait_ready()
        proc.wait_ready(stages=False)  # decode alone is behind it: what refuses bad images
        await asyncio.to_thread(http, "POST", proc.url + "/v1/detect", b"", {"Content-Type": "image/jpeg"})
        before = proc.rss_kib()
        seen = await storm(proc)
        after = proc.rss_kib()
        wrong = {k: v for k, v in seen.items() if "WRONG" in k}
        assert not wrong, seen
        assert sum(seen.values()) == UPLOADS, seen
        _, _, body = await asyncio.to_thread(http, "GET", proc.url + "/readyz")
        checks = json.loads(body)["checks"]
        # Only decode runs behind it, so "stages" stays false (no detector or classifier): the gateway's own are.
        assert checks["serving"] and checks["broker"] and checks["results"], f"not ready after the storm: {checks}"
        assert after - before < RSS_GROWTH_LIMIT_KIB, f"RSS grew {after - before} KiB ({before} -> {after})"
        status, _, metrics = await asyncio.to_thread(http, "GET", proc.url + "/metrics")
        assert status == 200
        codes = [line for line in metrics.decode().splitlines() if line.startswith("visionpipe_gateway_requests_total")]
        # /readyz answers 503 by design (no detector or classifier behind it); no upload got a 5xx.
        assert not any('code="5' in line and 'route="/readyz"' not in line for line in codes), codes
    finally:
        proc.kill()
        decode.close()
