"""The protocol's HTTP face over raw HTTP: malformed requests get the protocol's error JSON, and the gateway stays up.

Pass-through stages behind the gateway (``tests/loadgen/passthrough.py``): these tests are about the envelope.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from tests.services.gateway.helpers import gateway_settings, http, jpeg, serving
from visionpipe.services.gateway.oip.model import OUTPUTS

INFER = "/v2/models/visionpipe/infer"


async def call(*args: Any) -> tuple[int, dict[str, str], bytes]:
    """A blocking urllib request on a thread: the gateway runs on this test's event loop."""
    return await asyncio.to_thread(http, *args)


def binary_request(images: list[bytes], header_extra: int = 0, **tensor: object) -> tuple[bytes, dict[str, str]]:
    """Triton's binary layout: the JSON, then each image as a 4-byte little-endian length and its bytes."""
    data = b"".join(len(im).to_bytes(4, "little") + im for im in images)
    spec = {"name": "images", "datatype": "BYTES", "shape": [len(images)], **tensor}
    spec.setdefault("parameters", {"binary_data_size": len(data)})
    head = json.dumps({"inputs": [spec], "parameters": {"binary_data_output": True}}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head) + header_extra)}


def json_request(images: list[bytes]) -> bytes:
    data = [base64.b64encode(im).decode() for im in images]
    tensor = {"name": "images", "datatype": "BYTES", "shape": [len(images)], "data": data}
    tensor["parameters"] = {"content_type": "base64"}
    return json.dumps({"id": "mine", "inputs": [tensor]}).encode()


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("bad_json", 400, "bad_request"),
        ("wrong_datatype", 422, "invalid_request"),
        ("shape_mismatch", 422, "invalid_request"),
        ("header_past_body", 400, "bad_request"),
        ("binary_size_lies", 400, "bad_request"),
        ("unknown_model", 404, "model_not_found"),
        ("unknown_output", 422, "invalid_request"),
        ("media_type", 415, "unsupported_media_type"),
        ("too_large", 413, "too_large"),
        ("bad_request_id", 422, "invalid_request"),
    ],
)
async def test_a_malformed_request_gets_the_protocols_error_and_the_gateway_stays_up(
    ns: str, case: str, status: int, code: str
) -> None:
    image = jpeg(seed=3)
    body, headers = binary_request([image])
    path = INFER
    if case == "bad_json":
        body, headers = b'{"inputs": [', {}
    elif case == "wrong_datatype":
        body, headers = binary_request([image], datatype="UINT8")
    elif case == "shape_mismatch":
        body, headers = binary_request([image], shape=[2])
    elif case == "header_past_body":
        body, headers = binary_request([image], header_extra=len(image) * 2)
    elif case == "binary_size_lies":
        body, headers = binary_request([image], parameters={"binary_data_size": len(image) + 99})
    elif case == "unknown_model":
        path = "/v2/models/resnet50/infer"
    elif case == "unknown_output":
        doc = json.loads(json_request([image]))
        doc["outputs"] = [{"name": "masks"}]
        body, headers = json.dumps(doc).encode(), {}
    elif case == "media_type":
        headers["Content-Type"] = "image/jpeg"
    elif case == "bad_request_id":
        headers["X-Request-Id"] = "two words"
    elif case == "too_large":
        body, headers = binary_request([jpeg(2000, 2000, seed=4)])
    settings = gateway_settings(ns, limits={"max_image_bytes": 60_000})
    async with serving(settings) as live:
        got, _, answer = await call("POST", live.url + path, body, headers)
        doc = json.loads(answer)
        assert (got, doc["code"]) == (status, code), doc
        assert doc["error"].startswith(f"{code}: ") and len(doc["error"]) > len(code) + 10  # a reason to read
        assert (await call("GET", live.url + "/v2/health/ready"))[0] == 200
        ok, _, result = await call("POST", live.url + INFER, *binary_request([jpeg(seed=5)]))
        assert ok == 200 and result.startswith(b"{")


async def test_json_encoded_images_and_outputs(ns: str) -> None:
    async with serving(gateway_settings(ns)) as live:
        status, headers, body = await call(
            "POST", live.url + INFER, json_request([jpeg(seed=6), jpeg(320, 200, seed=7)])
        )
        assert status == 200, body
        doc = json.loads(body)
        assert (
            doc["id"] == "mine"
            and doc["model_name"] == "visionpipe"
            and "inference-header-content-length" not in headers
        )
        outputs = {o["name"]: o for o in doc["outputs"]}
        assert list(outputs) == list(OUTPUTS)
        assert outputs["counts"]["data"] == [1, 1] and outputs["boxes"]["shape"] == [2, 1, 4]
        assert outputs["boxes"]["data"][4:] == [80.0, 50.0, 192.0, 150.0]  # the stand-in's box on the 320x200 image
        results = [json.loads(r) for r in outputs["result_json"]["data"]]
        assert [r["image"]["width"] for r in results] == [640, 320]
        assert doc["parameters"]["request_id"] == ",".join(r["request_id"] for r in results)


async def test_deadline_header_and_parameter_reach_the_pipeline(ns: str) -> None:
    async with serving(gateway_settings(ns), stall=lambda rid: 1.0) as live:
        body, headers = binary_request([jpeg(seed=8)])
        status, _, answer = await call("POST", live.url + INFER, body, {**headers, "X-Deadline-Ms": "300"})
        doc = json.loads(answer)
        assert status == 504 and doc["code"] == "deadline_exceeded", doc
        doc_in = json.loads(json_request([jpeg(seed=9)]))
        doc_in["parameters"] = {"deadline_ms": 250}
        status, _, answer = await call("POST", live.url + INFER, json.dumps(doc_in).encode())
        assert status == 504 and json.loads(answer)["code"] == "deadline_exceeded"
