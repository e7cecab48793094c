"""The gateway's endpoints over a real socket with a real HTTP client (aiohttp), pass-through stages behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import aiohttp
import pytest

from tests.loadgen.passthrough import BOX, POISON
from tests.services.gateway.helpers import gateway_settings, jpeg, serving

JPEG = {"Content-Type": "image/jpeg"}


async def post(
    s: aiohttp.ClientSession, url: str, body: bytes | aiohttp.FormData, headers: dict[str, str] | None = None
) -> tuple[int, Mapping[str, str], dict]:
    async with s.post(url, data=body, headers=headers if headers is not None else JPEG) as r:
        return r.status, r.headers.copy(), await r.json(content_type=None)


async def test_detect_returns_boxes_in_original_pixels_with_labels_and_timings(ns: str) -> None:
    async with serving(gateway_settings(ns)) as live, aiohttp.ClientSession() as s:
        status, headers, doc = await post(s, live.url + "/v1/detect", jpeg(800, 600))
        assert status == 200, doc
        assert doc["status"] == "done" and headers["X-Request-Id"] == doc["request_id"]
        assert doc["image"] == {"width": 800, "height": 600, "orientation": 1}
        (obj,) = doc["objects"]
        assert obj["box"] == [BOX[0] * 800, BOX[1] * 600, BOX[2] * 800, BOX[3] * 600]
        assert obj["label_name"] == "thing" and obj["top_k"][0] == {"label": 1, "name": "thing", "score": 0.5}
        timings = doc["timings_ms"]
        assert {"ingress wait", "broker hops", "decode", "detector", "classifier", "total"} <= timings.keys()
        parts = sum(v for k, v in timings.items() if k != "total")
        assert timings["total"] == pytest.approx(parts, abs=0.01) and timings["detector"] > 0


async def test_multipart_and_submit_then_fetch(ns: str) -> None:
    async with serving(gateway_settings(ns)) as live, aiohttp.ClientSession() as s:
        form = aiohttp.FormData()
        form.add_field("image", jpeg(seed=1), filename="a.jpg", content_type="image/jpeg")
        status, _, doc = await post(s, live.url + "/v1/detect", form, headers={})
        assert status == 200 and doc["image"]["width"] == 640
        status, headers, accepted = await post(s, live.url + "/v1/requests", jpeg(seed=2))
        assert status == 202 and headers["Location"] == accepted["result_url"]
        async with s.get(live.url + accepted["result_url"] + "?wait_ms=5000") as r:
            assert r.status == 200 and (await r.json())["request_id"] == accepted["request_id"]
        async with s.get(live.url + "/v1/results/never-sent") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_a_retry_with_the_same_request_id_is_one_request(ns: str) -> None:
    seen: list[str] = []

    def count(rid: str) -> float:
        seen.append(rid)
        return 0.0

    async with serving(gateway_settings(ns), stall=count) as live, aiohttp.ClientSession() as s:
        headers = {**JPEG, "X-Request-Id": "retry-1"}
        image = jpeg(seed=3)
        first, second = await asyncio.gather(*(post(s, live.url + "/v1/detect", image, headers) for _ in range(2)))
        third = await post(s, live.url + "/v1/detect", image, headers)
        assert first[0] == second[0] == third[0] == 200
        assert first[2] == second[2] == third[2]
        assert seen.count("retry-1") == 3  # through each of the three stages once: one request, not three
        status, _, doc = await post(s, live.url + "/v1/detect", jpeg(seed=4), headers)
        assert status == 409 and doc["error"] == "request_id_conflict"


async def test_a_wait_that_runs_out_is_504_and_the_result_comes_later(ns: str) -> None:
    async with (
        serving(gateway_settings(ns), stall=lambda rid: 1.0 if rid == "slow" else 0.0) as live,
        aiohttp.ClientSession() as s,
    ):
        status, _, doc = await post(
            s, live.url + "/v1/detect?timeout_ms=200", jpeg(seed=5), {**JPEG, "X-Request-Id": "slow"}
        )
        assert status == 504 and doc["error"] == "timeout" and doc["request_id"] == "slow"
        async with s.get(live.url + "/v1/results/slow") as r:
            assert r.status == 202 and (await r.json())["status"] == "pending"
        async with s.get(live.url + "/v1/results/slow?wait_ms=8000") as r:
            assert r.status == 200 and (await r.json())["request_id"] == "slow"


async def test_a_fresh_id_told_in_a_504_is_pending_not_unknown(ns: str) -> None:
    """Without X-Request-Id the client learns the id from the 504: from then on a GET of it must say pending."""
    async with serving(gateway_settings(ns), stall=lambda rid: 0.5) as live, aiohttp.ClientSession() as s:
        status, _, doc = await post(s, live.url + "/v1/detect?timeout_ms=100", jpeg(seed=6))
        assert status == 504
        async with s.get(f"{live.url}/v1/results/{doc['request_id']}") as r:
            assert r.status == 202, await r.text()


async def test_backpressure_is_429_with_retry_after_never_a_drop(ns: str) -> None:
    settings = gateway_settings(ns, limits={"ingress_high_watermark": 2}, gateway={"retry_after_s": 3})
    held: set[str] = set()

    def hold_first(rid: str) -> float:  # decode sits on the first request for 2 s, so the backlog builds
        if rid == "bp-0" and rid not in held:
            held.add(rid)
            return 2.0
        return 0.0

    async with serving(settings, stall=hold_first) as live, aiohttp.ClientSession() as s:
        answers = []
        for i in range(8):
            headers = {**JPEG, "X-Request-Id": f"bp-{i}"}
            answers.append(await post(s, live.url + "/v1/requests", jpeg(seed=10 + i), headers))
            await asyncio.sleep(0.12)  # past one backlog poll, so each request sees the one before it
        codes = [a[0] for a in answers]
        assert codes[:2] == [202, 202] and 429 in codes, codes
        refused = [a for a in answers if a[0] == 429]
        assert all(a[1]["Retry-After"] == "3" and a[2]["error"] == "backpressure" for a in refused)
        # Each admitted request gets its result; each refused one was never admitted (its id is unknown).
        for status, _, doc in answers:
            async with s.get(f"{live.url}/v1/results/{doc['request_id']}?wait_ms=9000") as r:
                assert r.status == (200 if status == 202 else 404)


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code"),
    [
        (b"", "image/jpeg", 422, "bad_image"),
        (b"%PDF-1.4 not a picture", "image/png", 422, "bad_image"),
        (jpeg()[:200], "image/jpeg", 422, "bad_image"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"hello", "", 415, "unsupported_media_type"),
        (b"--x\r\nnot a form", "multipart/form-data; boundary=x", 422, "bad_multipart"),
    ],
    ids=["empty", "not-an-image", "truncated", "text", "no-type", "bad-multipart"],
)
async def test_bad_input_is_refused_with_a_reason_before_the_broker(
    ns: str, body: bytes, ctype: str, status: int, code: str
) -> None:
    async with serving(gateway_settings(ns), stages=False) as live, aiohttp.ClientSession() as s:
        got, _, doc = await post(s, live.url + "/v1/detect", body, {"Content-Type": ctype} if ctype else {})
        assert (got, doc["error"]) == (status, code) and doc["detail"]
        assert await live.gateway.broker.length(live.settings.streams.name("frames")) == 0


async def test_input_decode_refuses_is_a_422_with_its_reason(ns: str) -> None:
    """What passes the header check but fails in decode comes back as the dead letter's reason."""
    async with serving(gateway_settings(ns)) as live, aiohttp.ClientSession() as s:
        status, _, doc = await post(s, live.url + "/v1/detect", POISON, {"Content-Type": "image/x-test"})
        # POISON is not an image to the header check either: refused at the gateway already.
        assert status == 422 and "not an image" in doc["detail"]


async def test_not_ready_is_503(ns: str) -> None:
    async with serving(gateway_settings(ns), stages=False) as live, aiohttp.ClientSession() as s:
        live.gateway.stopping.set()
        status, headers, doc = await post(s, live.url + "/v1/detect", jpeg())
        assert status == 503 and doc["error"] == "not_ready" and "Retry-After" in headers
        async with s.get(live.url + "/readyz") as r:
            assert r.status == 503 and (await r.json())["checks"]["serving"] is False


async def test_metrics_count_codes_and_waiting_requests(ns: str) -> None:
    async with serving(gateway_settings(ns), stall=lambda rid: 0.5) as live, aiohttp.ClientSession() as s:
        waiting = asyncio.create_task(post(s, live.url + "/v1/detect", jpeg(seed=20)))
        await asyncio.sleep(0.25)
        async with s.get(live.url + "/metrics") as r:
            text = await r.text()
        assert "visionpipe_gateway_waiting_requests 1.0" in text
        assert (await waiting)[0] == 200
        await post(s, live.url + "/v1/detect", b"x", {"Content-Type": "text/plain"})
        async with s.get(live.url + "/metrics") as r:
            text = await r.text()
        assert 'visionpipe_gateway_requests_total{code="200",route="/v1/detect"} 1.0' in text
        assert 'visionpipe_gateway_requests_total{code="415",route="/v1/detect"} 1.0' in text
        assert "visionpipe_gateway_waiting_requests 0.0" in text


async def test_openapi_docs_and_page(ns: str) -> None:
    async with serving(gateway_settings(ns), stages=False) as live, aiohttp.ClientSession() as s:
        async with s.get(live.url + "/openapi.json") as r:
            spec = json.loads(await r.text())
        assert {"/v1/detect", "/v1/requests", "/v1/results/{request_id}"} <= spec["paths"].keys()
        detect = spec["paths"]["/v1/detect"]["post"]
        assert {"200", "413", "415", "422", "429", "503", "504"} <= detect["responses"].keys()
        assert "image/jpeg" in detect["requestBody"]["content"]
        async with s.get(live.url + "/docs") as r:
            html = await r.text()
        assert r.status == 200 and "/_docs/swagger-ui-bundle.js" in html and "cdn" not in html
        async with s.get(live.url + "/_docs/swagger-ui-bundle.js") as r:
            assert r.status == 200
        async with s.get(live.url + "/") as r:
            assert r.status == 200 and "/v1/detect" in await r.text()
