"""``loadgen run --target oip+http://…`` and ``oip+grpc://…``: the same open-loop load through the OIP faces."""

from __future__ import annotations

import pytest

from tests.services.gateway.helpers import gateway_settings, jpeg, serving
from visionpipe.loadgen.http_target import HttpOptions, run_http_load
from visionpipe.loadgen.payloads import ImageSet
from visionpipe.loadgen.schedule import LoadSpec

IMAGES = ImageSet(tuple(jpeg(320, 240, seed=i) for i in range(4)), "test JPEGs")


def target(kind: str, live: object) -> str:
    server = live.server  # type: ignore[attr-defined]
    return f"oip+http://127.0.0.1:{server.port}" if kind == "http" else f"oip+grpc://127.0.0.1:{server.grpc_port}"


@pytest.mark.parametrize("kind", ["http", "grpc"])
async def test_open_loop_through_each_protocol_completes_every_request(ns: str, kind: str) -> None:
    async with serving(gateway_settings(ns)) as live:
        out = await run_http_load(target(kind, live), LoadSpec("constant", rate=40, duration_s=1.0), IMAGES)
    assert out["sent"] == 40 and out["completed"] == 40 and out["statuses"] == {"200": 40}, out["statuses"]
    assert out["lost"] == 0 and out["latency_ms"]["p50"] > 0
    assert out["gateway_split_mean_ms"]["detector"] > 0  # read from each answer's result_json output


@pytest.mark.parametrize("kind", ["http", "grpc"])
async def test_refusals_and_deadlines_are_counted_by_status_and_code(ns: str, kind: str) -> None:
    settings = gateway_settings(ns, limits={"ingress_high_watermark": 10})
    async with serving(settings, stall=lambda rid: 0.1) as live:  # it falls behind: 429s and missed deadlines
        out = await run_http_load(
            target(kind, live),
            LoadSpec("constant", rate=50, duration_s=1.0),
            IMAGES,
            HttpOptions(warmup_requests=0, deadline_ms=250),
        )
    assert out["sent"] == 50 and out["lost"] == 0 and sum(out["statuses"].values()) == 50, out
    assert out["rejected_429"] > 0 and out["deadline_exceeded"] > 0, out["errors"]
    assert set(out["errors"]) <= {"429 backpressure", "429 deadline_infeasible", "504 deadline_exceeded"}, out


def test_grpc_requests_are_serialized_once_per_image_in_the_order_images_are_picked() -> None:
    from visionpipe.loadgen.oip_target import OipGrpcLoad
    from visionpipe.services.gateway.oip.model import split_bytes

    load = OipGrpcLoad("127.0.0.1:1", IMAGES, HttpOptions())
    for n in range(2 * len(IMAGES.images)):
        request = load.p.ModelInferRequest.FromString(load.requests[n % len(load.requests)])
        assert request.model_name == "visionpipe" and len(request.inputs) == 1
        tensor = request.inputs[0]
        assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("images", "BYTES", [1])
        assert split_bytes(request.raw_input_contents[0]) == [IMAGES.pick(n)]
