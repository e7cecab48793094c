"""Over 200 hostile inputs against the real front doors: ``visionpipe serve gateway`` (two of them: one with a short
result TTL for the request-id edges), the three real stages and ``visionpipe ingest`` as processes, over Redis.

Each input gets the answer the README documents (status, error code, words of the reason; for an image the
pipeline takes, the size and orientation of its result). Throughout, a probe in a process of its own asks the
gateway's /healthz every 25 ms; at the end every process is still up, the gateway is ready, the memory each gained
is within its bound, and the dead letters of the refused images are still listed for operators.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.harness import VISIONPIPE, Processes
from tests.servers import Server, free_port
from tests.services.gateway.corpus import Case, images, large_photo_png
from tests.services.gateway.helpers import GatewayProc, http, jpeg
from tests.services.helpers import env_for, fast_overrides
from tests.services.ingest.test_api_check import make_tricks
from visionpipe.broker import connect
from visionpipe.broker.dlq import list_dead
from visionpipe.settings import LimitSettings, load_settings

TOKEN = "corpus-T0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONCURRENCY = 6
TTL_S = 8.0  # the short-TTL gateway's: room for its slow request to finish before that request's deadline
MB = 1024 * 1024
UPLOAD_BUDGET = 64 * MB
# What each process may gain over the corpus, after a warm-up. Before the fixes: the gateway went 88 -> 633 MB
# under 16 large uploads, decode gained ~800 MB from eight bombs and kept it.
GATEWAY_GROWTH_LIMIT_MB = 64
DECODE_GROWTH_LIMIT_MB = 128
# /healthz while the corpus runs: its p99 within this, and every answer within the second bound. A blocked event
# loop took seconds before the fix; one probe in hundreds can wait ~100 ms for a core on two shared ones whatever
# the gateway does, so the worst answer alone is held only to the bound a blocked loop fails.
HEALTHZ_LIMIT_MS = 100.0
# On a machine whose load average is past twice its cores (other jobs beside this test), a process that is ready
# waits its turn for hundreds of ms whatever it does: the p99 is then held to this bound too, and the report says
# which bound held.
OVERLOADED_HEALTHZ_LIMIT_MS = 1000.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Tally:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, kind: str, want: str, status: int, doc: Any, ok: bool) -> None:
        self.rows.append(
            {
                "name": name,
                "kind": kind,
                "want": want,
                "status": status,
                "ok": ok,
                "got": doc if isinstance(doc, dict) else str(doc)[:200],
            }
        )

    @property
    def wrong(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["ok"]]


def judged(case: Case, status: int, doc: Any) -> bool:
    if status != case.status or not isinstance(doc, dict):
        return False
    if case.status == 200:
        return doc.get("image") == case.image and isinstance(doc.get("objects"), list)
    return doc.get("error") == case.code and case.words in str(doc.get("detail", ""))


async def send(s: aiohttp.ClientSession, url: str, case: Case, tally: Tally, gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            async with s.post(
                url + "/v1/detect?timeout_ms=45000", data=io.BytesIO(case.body), headers={**case.headers, **AUTH}
            ) as r:
                status, doc = r.status, await r.json(content_type=None)
        except aiohttp.ClientError as exc:
            status, doc = 0, repr(exc)
    tally.add(case.name, case.kind, f"{case.status} {case.code}".strip(), status, doc, judged(case, status, doc))


async def raw(port: int, head: bytes, body: bytes = b"", wait_s: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    data = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                data += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return data


def head(length: str, extra: str = "") -> bytes:
    return (
        f"POST /v1/detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def answered(data: bytes, status: int, code: str) -> bool:
    return data.startswith(f"HTTP/1.1 {status}".encode()) and f'"{code}"'.encode() in data


async def floods_and_lies(port: int, tally: Tally) -> None:
    """Uploads held beyond the byte budget (429 at once), then let go by their chunk timeout (408); bodies that lie."""
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for _, writer in slow:  # 3 x 20 MB announced, two bytes sent: 60 of the 64 MB budget held
        writer.write(head(str(20 * MB)) + b"\xff\xd8")
    await asyncio.sleep(0.5)
    for i in range(6):
        data = await raw(port, head(str(20 * MB)), wait_s=5)
        tally.add(
            f"upload beyond the budget {i}",
            "flood",
            "429 uploads_busy",
            int(data[9:12] or 0),
            data[:300],
            answered(data, 429, "uploads_busy") and b"retry-after" in data.lower(),
        )
    for i, (reader, writer) in enumerate(slow):
        data = b""
        try:
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    data += chunk
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        tally.add(
            f"stalled 20 MB upload {i}",
            "flood",
            "408 body_timeout",
            int(data[9:12] or 0),
            data[:300],
            answered(data, 408, "body_timeout"),
        )
    lies = [
        ("100 MB declared", head(str(100 * MB)), 413, "too_large"),
        ("100 MB declared again", head(str(100 * MB)), 413, "too_large"),
    ]
    for name, h, status, code in lies:
        data = await raw(port, h, wait_s=5)
        tally.add(name, "body", f"{status} {code}", int(data[9:12] or 0), data[:300], answered(data, status, code))
    for name, length in (("Content-Length not a number", "12x"), ("Content-Length negative", "-5")):
        data = await raw(port, head(length), wait_s=5)  # the HTTP parser's own refusal: the app never sees these
        ok = data.startswith(b"HTTP/1.1 400") and b"Invalid HTTP request" in data
        tally.add(name, "body", "400 from the HTTP parser", int(data[9:12] or 0), data[:300], ok)


async def tokens(s: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    """The tokens file has an indented '# old' line: neither it nor any other guess opens the API."""
    for name, headers in [
        ("no token", {}),
        ("the indented comment as a token", {"Authorization": "Bearer # old"}),
        ("a bare #", {"Authorization": "Bearer #"}),
        ("the token with a space", {"Authorization": f"Bearer {TOKEN} x"}),
        ("another token", {"Authorization": "Bearer guess"}),
    ]:
        async with s.post(url + "/v1/detect", data=jpeg(), headers={"Content-Type": "image/jpeg", **headers}) as r:
            doc = await r.json(content_type=None)
            tally.add(
                f"token: {name}",
                "token",
                "401 unauthorized",
                r.status,
                doc,
                r.status == 401 and doc.get("error") == "unauthorized",
            )


async def streams_tricks(s: aiohttp.ClientSession, url: str, videos: Path, tally: Tally) -> None:
    """lavfi and path tricks through the gateway's /v1/streams, refused by the ingest service behind it."""
    cases = [*make_tricks(videos), ("lavfi:testsrc annotate", "annotate is not taken")]
    for trick, words in cases:
        body: dict[str, Any] = {"url": trick}
        if trick.endswith(" annotate"):
            body = {"url": "lavfi:testsrc", "annotate": str(videos / "out.mp4")}
        async with s.post(url + "/v1/streams", json=body, headers=AUTH) as r:
            doc = await r.json(content_type=None)
            tally.add(f"streams: {trick}", "streams", "422", r.status, doc, r.status == 422 and words in doc["detail"])


async def ttl_edges(s: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    """A request id reused around its claim's and its result's expiry, on the gateway whose TTL is short."""

    async def detect(image: bytes, rid: str) -> tuple[int, Any]:
        headers = {"Content-Type": "image/png", "X-Request-Id": rid, **AUTH}
        async with s.post(url + "/v1/detect?timeout_ms=30000", data=io.BytesIO(image), headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def get(rid: str) -> tuple[int, Any]:
        async with s.get(f"{url}/v1/results/{rid}", headers=AUTH) as r:
            return r.status, await r.json(content_type=None)

    def note(name: str, want: str, got: tuple[int, Any], ok: bool) -> None:
        tally.add(f"id reuse: {name}", "id reuse", want, got[0], got[1], ok)

    def size(got: tuple[int, Any]) -> Any:
        return got[1].get("image", {}).get("width") if isinstance(got[1], dict) else None

    a, b, rid = large_photo_png(1), jpeg(320, 200, seed=5), f"t{time.time_ns()}"
    t0 = time.monotonic()
    first = await detect(a, rid)
    done = time.monotonic()
    note("first", "200 A", first, first[0] == 200 and size(first) == 3000)
    retry = await detect(a, rid)
    same = retry[0] == 200 and all(retry[1].get(k) == first[1].get(k) for k in ("request_id", "image", "objects"))
    note("retry, same image", "200 A, not redone", retry, same)
    other = await detect(b, rid)
    note("another image at once", "409", other, other[0] == 409 and other[1]["error"] == "request_id_conflict")
    assert done - t0 > 0.3, "A was too quick to outlive its claim: no TTL edge to test"
    await asyncio.sleep(max(0.0, t0 + TTL_S + 0.1 - time.monotonic()))  # A's claim alone would have expired
    edge = await detect(b, rid)
    note("another image past the claim's TTL, within the result's", "409", edge, edge[0] == 409)
    kept = await get(rid)
    note("GET past the claim's TTL", "200 A", kept, kept[0] == 200 and size(kept) == 3000)
    await asyncio.sleep(max(0.0, done + TTL_S + 1.0 - time.monotonic()))  # A's result gone too
    after = await detect(b, rid)
    note("another image after both expired", "200 B", after, after[0] == 200 and size(after) == 320)
    now = await get(rid)
    note("GET after the reuse", "200 B", now, now[0] == 200 and size(now) == 320)
    whole = jpeg(640, 480, seed=6)
    bad, bid = whole[: len(whole) // 2], f"b{time.time_ns()}"  # its header passes: admitted, refused by decode
    for name in ("a truncated image", "its retry"):
        got = await detect(bad, bid)
        note(f"{name} under an id", "422", got, got[0] == 422 and got[1]["error"] == "bad_image")
    clash = await detect(b, bid)
    note("another image under the bad one's id", "409", clash, clash[0] == 409)
    unknown = await get("never-sent")
    note("GET of an unknown id", "404", unknown, unknown[0] == 404)


def start_ingest(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with (tmp / "ingest.log").open("ab") as log:
        argv = [VISIONPIPE, "ingest", "--port", str(port)]
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] != 200:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp / "ingest.log").read_text()[-3000:]
        time.sleep(0.2)
    return proc, port


async def warm_up(s: aiohttp.ClientSession, url: str) -> None:
    """One of each decode path's common inputs first: what a process loads once is not growth."""
    from tests.services.gateway.corpus import orientations, unusual_modes

    for case in [*unusual_modes()[:4], orientations()[5]]:
        async with s.post(
            url + "/v1/detect?timeout_ms=60000", data=io.BytesIO(case.body), headers={**case.headers, **AUTH}
        ) as r:
            assert r.status == 200, await r.text()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_over_200_hostile_inputs_get_their_documented_answers_and_every_process_stays_up(
    tmp_path: Path, ns: str, redis_server: Server
) -> None:
    load_at_start = os.getloadavg()[0]
    videos = tmp_path / "videos"
    videos.mkdir()
    (tmp_path / "tokens").write_text(f"  # old\n{TOKEN}\n")
    base = env_for(fast_overrides(ns, redis_server.url)) | {
        "VISIONPIPE_GATEWAY__TOKENS_FILE": str(tmp_path / "tokens"),
        # The default limit: the bombs are refused for what they are, not for their pixel count.
        "VISIONPIPE_LIMITS__MAX_IMAGE_PIXELS": str(LimitSettings().max_image_pixels),
    }
    stages = Processes(base, tmp_path)
    procs: list[GatewayProc] = []
    ingest: subprocess.Popen[bytes] | None = None
    probe_out = tmp_path / "probe.json"
    probe = None
    try:
        # One after the other: each picks a free port only once the ones before it hold theirs.
        decode, *_ = await asyncio.to_thread(stages.pipeline)
        ingest_env = {**base, "VISIONPIPE_INGEST__API_FILE_ROOTS": json.dumps([str(videos)])}
        ingest, ingest_port = await asyncio.to_thread(start_ingest, ingest_env, tmp_path)
        gw_env = {
            **base,
            "VISIONPIPE_GATEWAY__INGEST_URL": f"http://127.0.0.1:{ingest_port}",
            "VISIONPIPE_GATEWAY__MAX_UPLOAD_BYTES_IN_FLIGHT": str(UPLOAD_BUDGET),
            "VISIONPIPE_GATEWAY__BODY_CHUNK_TIMEOUT_S": "2",
            "VISIONPIPE_GATEWAY__WAIT_S": "45",
            **({"PYTHONASYNCIODEBUG": "1"} if os.environ.get("CORPUS_DEBUG") else {}),
        }
        gateway = GatewayProc(gw_env, tmp_path).start()
        procs.append(gateway)
        await asyncio.to_thread(gateway.wait_ready)
        short_env = {
            **base,
            "VISIONPIPE_GATEWAY__RESULT_TTL_S": str(TTL_S),
            "VISIONPIPE_GATEWAY__GROUP": "gw-ttl",
            "VISIONPIPE_GATEWAY__RESULTS_URL": redis_server.url.rsplit("/", 1)[0] + "/1",
        }
        short = GatewayProc(short_env, tmp_path).start()
        procs.append(short)
        await asyncio.to_thread(short.wait_ready)
        tally = Tally()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            await warm_up(s, gateway.url)
            before = {"gateway": gateway.rss_kib() / 1024, "decode": rss_mb(decode.proc.pid)}  # type: ignore[union-attr]
            probe = subprocess.Popen(
                [sys.executable, "-m", "tests.services.gateway.probe", str(gateway.port), str(probe_out)],
                cwd=Path(__file__).parents[3],
            )
            t0 = time.monotonic()
            gate = asyncio.Semaphore(CONCURRENCY)
            await asyncio.gather(
                *(send(s, gateway.url, c, tally, gate) for c in images()),
                tokens(s, gateway.url, tally),
                streams_tricks(s, gateway.url, videos, tally),
            )
            await floods_and_lies(gateway.port, tally)  # alone: it counts on the budget being its own
            await ttl_edges(s, short.url, tally)  # on a quiet pipeline: its timing is the point
            took = time.monotonic() - t0
            probe.send_signal(signal.SIGTERM)
            probe.wait(30)
            after = {"gateway": gateway.rss_kib() / 1024, "decode": rss_mb(decode.proc.pid)}  # type: ignore[union-attr]
        health = json.loads(probe_out.read_text())
        stages.assert_alive()
        assert gateway.proc is not None and gateway.proc.poll() is None and ingest.poll() is None, gateway.log()
        status, _, body = await asyncio.to_thread(http, "GET", gateway.url + "/readyz")
        assert status == 200 and json.loads(body)["ready"], body
        settings = load_settings(**fast_overrides(ns, redis_server.url))
        async with await connect(settings=settings) as broker:
            kept = await list_dead(broker, settings.streams.name("dead_letter"), 10_000)
        refused_by_decode = len(  # requests, not answers: a retry is answered from the stored failure
            {r["got"].get("request_id") for r in tally.rows if r["status"] == 422 and "decode:" in str(r["got"])}
        )
        report = {
            "sent": len(tally.rows),
            "seconds": round(took, 1),
            "status_counts": dict(Counter(r["status"] for r in tally.rows)),
            "kinds": dict(Counter(r["kind"] for r in tally.rows)),
            "rss_mb_before": before,
            "rss_mb_after": after,
            "healthz": health,
            "dead_letters_kept": len(kept),
            "refused_by_decode": refused_by_decode,
            "load_average": os.getloadavg(),
            "wrong": tally.wrong,
        }
        (Path(os.environ.get("CORPUS_REPORT", tmp_path / "corpus-report.json"))).write_text(
            json.dumps(report, indent=1)
        )
        print("\nhostile corpus:", json.dumps({k: v for k, v in report.items() if k != "wrong"}))
        assert len(tally.rows) >= 200
        assert not tally.wrong, "\n".join(
            f"{w['name']} | want {w['want']} | got {w['status']} {w['got']}"[:300] for w in tally.wrong
        )
        assert refused_by_decode > 0 and len(kept) >= refused_by_decode, "dead letters read by the gateway are kept"
        assert health["failures"] == 0 and health["count"] > 100
        overloaded = max(load_at_start, os.getloadavg()[0]) > 2 * (os.cpu_count() or 1)
        limit = OVERLOADED_HEALTHZ_LIMIT_MS if overloaded else HEALTHZ_LIMIT_MS
        print(f"/healthz p99 bound: {limit:g} ms ({'overloaded machine' if overloaded else 'as required'})")
        assert health["p99_ms"] < limit and health["worst_ms"] < OVERLOADED_HEALTHZ_LIMIT_MS, health
        assert after["gateway"] - before["gateway"] < GATEWAY_GROWTH_LIMIT_MB, (before, after)
        assert after["decode"] - before["decode"] < DECODE_GROWTH_LIMIT_MB, (before, after)
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()
        for proc in procs:
            proc.kill()
        if ingest is not None:
            ingest.kill()
            ingest.wait()
        stages.close()
