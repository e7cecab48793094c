"""Triton's own client (``tritonclient``, unmodified) against the gateway, with the three real stages behind it.

Over HTTP (binary and JSON encodings) and gRPC: metadata, readiness, one image and a batch of four, a bad image,
and the outputs checked against the native ``/v1/detect`` answer for the same image.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.services.gateway.helpers import http
from tests.services.gateway.oip.helpers import RealPipeline, real_settings
from visionpipe.services.gateway.oip.model import OUTPUTS

SAMPLES = files("visionpipe.samples")
PHOTOS = ["street-640x480.jpg", "park-640x480.jpg", "chelsea-451x300.jpg", "coffee-600x400.jpg"]


def photo(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.fixture(scope="module")
def pipeline() -> Iterator[RealPipeline]:
    with RealPipeline(real_settings(f"oip{uuid.uuid4().hex[:8]}")) as p:
        yield p


@pytest.fixture
def hclient(pipeline: RealPipeline) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(pipeline.http_url, network_timeout=60.0)
    yield client
    client.close()
    # Closed now, here: its finalizer closes again, and garbage collection may run it on the pipeline's thread,
    # where gevent refuses to touch this thread's pool.
    client.close = lambda: None  # type: ignore[method-assign]


@pytest.fixture
def gclient(pipeline: RealPipeline) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(pipeline.grpc_target)
    yield client
    client.close()


def images_input(module: Any, images: list[bytes], binary: bool = True) -> Any:
    tensor = module.InferInput("images", [len(images)], "BYTES")
    if module is thttp:
        tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=binary)
    else:
        tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def native(pipeline: RealPipeline, image: bytes) -> dict[str, Any]:
    status, _, body = http(
        "POST", f"http://{pipeline.http_url}/v1/detect", image, {"Content-Type": "image/jpeg"}, timeout=60
    )
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def text(item: Any) -> str:
    """A BYTES element as read back: bytes from binary data, str from the JSON encoding."""
    return item.decode() if isinstance(item, bytes) else str(item)


def assert_matches(result: Any, i: int, doc: dict[str, Any]) -> None:
    """Image ``i`` of an infer result says what the native document says: boxes, scores, labels, names, top-k."""
    objects = doc["objects"]
    count = int(result.as_numpy("counts")[i])
    assert count == len(objects) > 0
    boxes, scores = result.as_numpy("boxes")[i], result.as_numpy("scores")[i]
    labels, names = result.as_numpy("labels")[i], result.as_numpy("label_names")[i]
    for j, obj in enumerate(objects):
        assert boxes[j].tolist() == pytest.approx(obj["box"], rel=1e-4, abs=1e-3)
        assert float(scores[j]) == pytest.approx(obj["score"], rel=1e-4)
        assert int(labels[j]) == obj["label"] and text(names[j]) == obj["label_name"]
        top = obj["top_k"]
        assert result.as_numpy("topk_labels")[i, j, : len(top)].tolist() == [t["label"] for t in top]
        assert result.as_numpy("topk_scores")[i, j, : len(top)].tolist() == pytest.approx([t["score"] for t in top])
        assert [text(t) for t in result.as_numpy("topk_names")[i, j, : len(top)]] == [t["name"] for t in top]
    assert (labels[count:] == -1).all() and (boxes[count:] == 0).all()  # padding past the image's objects


def test_metadata_and_readiness(hclient: thttp.InferenceServerClient, gclient: tgrpc.InferenceServerClient) -> None:
    for client in (hclient, gclient):
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("visionpipe")
    meta = hclient.get_model_metadata("visionpipe")
    assert meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        n: (d, s) for n, (d, s) in OUTPUTS.items()
    }
    assert meta["outputs"][0] == {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]}
    gmeta = gclient.get_model_metadata("visionpipe", as_json=True)
    assert [o["name"] for o in gmeta["outputs"]] == list(OUTPUTS) and gmeta["inputs"][0]["datatype"] == "BYTES"
    assert hclient.get_server_metadata()["name"] == gclient.get_server_metadata().name == "visionpipe"
    with pytest.raises(InferenceServerException):
        hclient.get_model_metadata("resnet50")
    with pytest.raises(InferenceServerException, match="model_not_found"):
        gclient.get_model_metadata("resnet50")
    assert not hclient.is_model_ready("resnet50")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        gclient.is_model_ready("resnet50")


def test_one_image_over_each_door_matches_the_native_result(
    pipeline: RealPipeline, hclient: thttp.InferenceServerClient, gclient: tgrpc.InferenceServerClient
) -> None:
    image = photo(PHOTOS[0])
    doc = native(pipeline, image)
    binary = hclient.infer("visionpipe", [images_input(thttp, [image])])
    as_json = hclient.infer(
        "visionpipe",
        [images_input(thttp, [image])],
        outputs=[thttp.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS],
    )
    over_grpc = gclient.infer("visionpipe", [images_input(tgrpc, [image])], client_timeout=60)
    for result in (binary, as_json, over_grpc):
        assert_matches(result, 0, doc)
        full = json.loads(text(result.as_numpy("result_json")[0]))
        assert full["objects"] == doc["objects"] and full["image"] == doc["image"]
    assert as_json.get_response()["outputs"][0]["data"]  # the JSON encoding: numbers in the body, no binary part


def test_a_batch_of_four_over_http_and_grpc(
    pipeline: RealPipeline, hclient: thttp.InferenceServerClient, gclient: tgrpc.InferenceServerClient
) -> None:
    images = [photo(p) for p in PHOTOS]
    docs = [native(pipeline, im) for im in images]
    rid = f"batch-{uuid.uuid4().hex[:6]}"
    results = [
        hclient.infer("visionpipe", [images_input(thttp, images)], headers={"X-Request-Id": rid}),
        gclient.infer("visionpipe", [images_input(tgrpc, images)], parameters={"deadline_ms": 60_000}),
    ]
    for result in results:
        assert result.as_numpy("counts").shape == (4,) and result.as_numpy("boxes").shape[0] == 4
        for i, doc in enumerate(docs):
            assert_matches(result, i, doc)
            assert json.loads(result.as_numpy("result_json")[i])["image"] == doc["image"]
    assert results[0].get_response()["parameters"]["request_id"] == ",".join(f"{rid}.{i}" for i in range(4))
    # The same id again is a retry: answered from the first attempt's results, not computed again.
    again = hclient.infer("visionpipe", [images_input(thttp, images)], headers={"X-Request-Id": rid})
    assert again.as_numpy("result_json").tolist() == results[0].as_numpy("result_json").tolist()


def test_a_bad_image_is_an_error_and_the_gateway_serves_on(
    hclient: thttp.InferenceServerClient, gclient: tgrpc.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException) as http_err:
        hclient.infer("visionpipe", [images_input(thttp, [b"not an image at all"])])
    assert http_err.value.status() == "422" and "bad_image" in str(http_err.value.message())
    with pytest.raises(InferenceServerException) as grpc_err:
        gclient.infer("visionpipe", [images_input(tgrpc, [photo(PHOTOS[1]), b"\xff\xd8\xff truncated"])])
    assert grpc_err.value.status() == "StatusCode.INVALID_ARGUMENT" and "bad_image" in str(grpc_err.value.message())
    assert hclient.is_server_ready() and gclient.is_model_ready("visionpipe")
    assert gclient.infer("visionpipe", [images_input(tgrpc, [photo(PHOTOS[1])])]).as_numpy("counts")[0] > 0
