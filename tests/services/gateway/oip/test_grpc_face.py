"""The protocol's gRPC face with Triton's generated stubs, and backpressure through both faces.

Triton's stubs (``tritonclient.grpc.service_pb2``) rather than its client where a test reads what the client
hides: the trailing metadata (``retry-after``) and the status of a malformed request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.services.gateway.helpers import Live, gateway_settings, http, jpeg, serving


def request(images: list[bytes], **tensor: Any) -> Any:
    spec = {"name": "images", "datatype": "BYTES", "shape": [len(images)], **tensor}
    raw = b"".join(len(im).to_bytes(4, "little") + im for im in images)
    return service_pb2.ModelInferRequest(
        model_name="visionpipe",
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(**spec)],
        raw_input_contents=[raw],
    )


@pytest.fixture
def stub_for() -> Iterator[Any]:
    channels: list[grpc.Channel] = []

    def make(live: Live) -> Any:
        channels.append(grpc.insecure_channel(f"127.0.0.1:{live.server.grpc_port}"))
        return service_pb2_grpc.GRPCInferenceServiceStub(channels[-1])

    yield make
    for channel in channels:
        channel.close()


async def test_malformed_calls_are_statuses_and_the_server_serves_on(ns: str, stub_for: Any) -> None:
    async with serving(gateway_settings(ns)) as live:
        stub = stub_for(live)
        cases = [
            (request([jpeg()], datatype="UINT8"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
            (request([jpeg()], shape=[3]), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
            (request([b"no image"]), grpc.StatusCode.INVALID_ARGUMENT, "bad_image"),
        ]
        unknown = request([jpeg()])
        unknown.model_name = "resnet50"
        cases.append((unknown, grpc.StatusCode.NOT_FOUND, "model_not_found"))
        cut = request([jpeg()])
        cut.raw_input_contents[0] = cut.raw_input_contents[0][:-10]
        cases.append((cut, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"))
        for message, code, error in cases:
            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(stub.ModelInfer, message, timeout=10)
            assert info.value.code() == code and info.value.details().startswith(error), info.value.details()
            assert dict(info.value.trailing_metadata())["visionpipe-error"] == error
        answer = await asyncio.to_thread(stub.ModelInfer, request([jpeg(seed=1), jpeg(seed=2)]), timeout=10)
        assert [o.name for o in answer.outputs][:3] == ["boxes", "scores", "labels"]
        assert np.frombuffer(answer.raw_output_contents[7], "<i4").tolist() == [1, 1]  # counts


async def test_backpressure_is_429_over_http_and_unavailable_over_grpc_with_retry_after(ns: str, stub_for: Any) -> None:
    settings = gateway_settings(ns, limits={"ingress_high_watermark": 2}, gateway={"retry_after_s": 3})
    async with serving(settings, stages=False) as live:  # nothing consumes: the backlog only grows
        stub = stub_for(live)
        outcomes: list[str] = []
        for i in range(8):
            message = request([jpeg(seed=20 + i)])
            message.parameters["deadline_ms"].int64_param = 100  # an admitted one ends at its deadline: 504
            try:
                await asyncio.to_thread(stub.ModelInfer, message, timeout=10)
                outcomes.append("OK")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    trailer = dict(exc.trailing_metadata())
                    assert trailer["retry-after"] == "3" and trailer["visionpipe-error"] == "backpressure"
                    assert trailer["http-status"] == "429"
            await asyncio.sleep(0.12)  # past one backlog poll, so each request sees the ones before it
        assert outcomes[:2] == ["DEADLINE_EXCEEDED"] * 2 and "UNAVAILABLE" in outcomes, outcomes

        def over_http() -> InferenceServerException:
            client = thttp.InferenceServerClient(live.url.removeprefix("http://"))
            try:
                tensor = thttp.InferInput("images", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([jpeg(seed=40)], dtype=object))
                with pytest.raises(InferenceServerException) as info:
                    client.infer("visionpipe", [tensor])
                return info.value
            finally:
                client.close()
                client.close = lambda: None  # type: ignore[method-assign]  # its finalizer may run on any thread

        refused = await asyncio.to_thread(over_http)
        assert refused.status() == "429" and "backpressure" in str(refused.message())
        body = request([jpeg(seed=41)])  # the same refusal over raw HTTP, where its Retry-After header shows
        raw = body.raw_input_contents[0]
        tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}
        head = json.dumps({"inputs": [tensor]})
        status, headers, _ = await asyncio.to_thread(
            http,
            "POST",
            live.url + "/v2/models/visionpipe/infer",
            head.encode() + raw,
            {"Inference-Header-Content-Length": str(len(head))},
        )
        assert status == 429 and headers["retry-after"] == "3"
