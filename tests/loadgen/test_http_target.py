"""``loadgen run --target``: open-loop load through the real gateway, every answer counted by status."""

from __future__ import annotations

from tests.services.gateway.helpers import gateway_settings, jpeg, serving
from visionpipe.loadgen.http_target import HttpOptions, run_http_load
from visionpipe.loadgen.payloads import ImageSet
from visionpipe.loadgen.schedule import LoadSpec

IMAGES = ImageSet(tuple(jpeg(320, 240, seed=i) for i in range(4)), "test JPEGs")


async def test_open_loop_through_the_gateway_completes_every_request(ns: str) -> None:
    async with serving(gateway_settings(ns)) as live:
        out = await run_http_load(live.url, LoadSpec("constant", rate=40, duration_s=1.0), IMAGES)
    assert out["sent"] == 40 and out["completed"] == 40 and out["statuses"] == {"200": 40}
    assert out["lost"] == 0 and out["rejected_429"] == 0
    assert out["latency_ms"]["p50"] > 0 and out["gateway_split_mean_ms"]["detector"] > 0


async def test_backpressure_and_errors_are_counted_not_lost(ns: str) -> None:
    settings = gateway_settings(ns, limits={"ingress_high_watermark": 10})
    async with serving(settings, stall=lambda rid: 0.1) as live:  # ~0.3 s a request, one at a time: it falls behind
        out = await run_http_load(
            live.url,
            LoadSpec("constant", rate=50, duration_s=1.0),
            IMAGES,
            HttpOptions(timeout_ms=200, warmup_requests=0),
        )
    assert out["sent"] == 50 and out["lost"] == 0
    assert out["rejected_429"] > 0 and out["statuses"].get("504", 0) > 0, out["statuses"]
    assert sum(out["statuses"].values()) == 50
    assert out["server_errors_5xx"] == out["statuses"].get("504", 0) + out["statuses"].get("503", 0)


async def test_closed_loop_keeps_n_in_flight(ns: str) -> None:
    async with serving(gateway_settings(ns)) as live:
        out = await run_http_load(live.url, LoadSpec("closed", duration_s=1.0, concurrency=3), IMAGES)
    assert out["completed"] == out["sent"] > 3 and out["lost"] == 0


async def test_a_deadline_is_sent_and_its_answers_are_counted_by_error_code(ns: str) -> None:
    async with serving(gateway_settings(ns), stall=lambda rid: 0.1) as live:  # it falls behind: deadlines go by
        out = await run_http_load(
            live.url,
            LoadSpec("constant", rate=30, duration_s=1.0),
            IMAGES,
            HttpOptions(warmup_requests=0, deadline_ms=250),
        )
    assert out["sent"] == 30 and out["lost"] == 0 and out["late"] == 0, out
    assert out["deadline_exceeded"] > 0 and out["errors"]["504 deadline_exceeded"] == out["deadline_exceeded"]
    assert out["completed"] + out["deadline_exceeded"] + out["deadline_infeasible"] == 30, out["statuses"]
