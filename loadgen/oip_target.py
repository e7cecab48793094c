"""Load through the gateway's Open Inference Protocol faces: ``--target oip+http://…`` and ``oip+grpc://…``.

The native target's schedules, recorder and report (``http_target``), with each request sent as a client of the
protocol sends it: over HTTP in the binary tensor layout (Triton's clients' default), asking for every output in
binary; over gRPC as ``ModelInfer`` with ``raw_input_contents``, on one HTTP/2 channel, each image's request
serialized once up front (the native target sends its image as it is, and a protobuf built, copied and serialized
per request would be load-generator CPU charged to the gRPC door on a box the two share). Answers are counted by the
same statuses as the native API's (a gRPC refusal carries its HTTP status and code in its trailing metadata), and
a 200's per-stage split is read from its ``result_json`` output.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc

from visionpipe.loadgen.http_target import TRANSPORT_ERROR, HttpLoad, HttpOptions, HttpRecorder
from visionpipe.loadgen.payloads import ImageSet

MODEL = "visionpipe"
INFER_PATH = f"/v2/models/{MODEL}/infer"
RESULT_OUTPUT = "result_json"


def oip_load(target: str, images: ImageSet, opts: HttpOptions) -> HttpLoad:
    if target.startswith("oip+http://"):
        return OipHttpLoad(target.removeprefix("oip+"), images, opts)
    if target.startswith("oip+grpc://"):
        return OipGrpcLoad(target.removeprefix("oip+grpc://"), images, opts)
    raise ValueError(f"{target!r}: an OIP target is oip+http://host:port or oip+grpc://host:port")


def last_bytes_element(blob: bytes) -> bytes:
    """The one element of a one-image BYTES tensor's raw bytes (a 4-byte length, then the bytes)."""
    return blob[4 : 4 + int.from_bytes(blob[:4], "little")]


class OipHttpLoad(HttpLoad):
    def __init__(self, target: str, images: ImageSet, opts: HttpOptions) -> None:
        super().__init__(target, images, opts)
        self.url = target.rstrip("/") + INFER_PATH
        self.headers.pop("Content-Type")

    async def one(self, s: aiohttp.ClientSession, rec: HttpRecorder, n: int, sched_ns: int) -> None:
        image = self.images.pick(n)
        size = {"binary_data_size": len(image) + 4}
        tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "parameters": size}
        head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        headers = {
            **self.headers,
            "X-Request-Id": f"{self.run_id}-{n}",
            "Inference-Header-Content-Length": str(len(head)),
        }
        try:
            body = head + len(image).to_bytes(4, "little") + image
            async with s.post(self.url, data=body, headers=headers) as r:
                data = await r.read()
                length = r.headers.get("Inference-Header-Content-Length")
                rec.record(sched_ns, str(r.status), _http_doc(data, length), self.opts.deadline_ms)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            rec.record(sched_ns, TRANSPORT_ERROR, None)


def _http_doc(data: bytes, header_length: str | None) -> dict[str, Any] | None:
    """A 200's result document (from its binary ``result_json`` output), or an error's code."""
    size = int(header_length) if header_length else len(data)
    doc = json.loads(data[:size])
    if "error" in doc:
        return {"error": doc.get("code", doc["error"])}
    at = size
    for out in doc["outputs"]:
        length = int(out["parameters"]["binary_data_size"])
        if out["name"] == RESULT_OUTPUT:
            found: dict[str, Any] = json.loads(last_bytes_element(data[at : at + length]))
            return found
        at += length
    return None


class OipGrpcLoad(HttpLoad):
    def __init__(self, target: str, images: ImageSet, opts: HttpOptions) -> None:
        super().__init__("http://" + target, images, opts)
        self.address = target
        from visionpipe.services.gateway.oip.codegen import protocol

        self.p = protocol()
        self.metadata = [(k.lower(), v) for k, v in self.headers.items() if k.lower() != "content-type"]
        self.requests = [self.request(image) for image in images.images]

    def request(self, image: bytes) -> bytes:
        """One image's ``ModelInferRequest``, serialized: the same for every send of it (its id is metadata)."""
        raw = len(image).to_bytes(4, "little") + image
        request = self.p.ModelInferRequest(model_name=MODEL, raw_input_contents=[raw])
        request.inputs.add(name="images", datatype="BYTES", shape=[1])
        return bytes(request.SerializeToString())

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        async with grpc.aio.insecure_channel(self.address, options=[("grpc.max_receive_message_length", -1)]) as ch:
            yield ch.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=None,  # already serialized bytes
                response_deserializer=self.p.ModelInferResponse.FromString,
            )

    async def one(self, s: Any, rec: HttpRecorder, n: int, sched_ns: int) -> None:
        request = self.requests[n % len(self.requests)]  # the image self.images.pick(n) names
        try:
            answer = await s(request, metadata=[*self.metadata, ("x-request-id", f"{self.run_id}-{n}")])
        except grpc.aio.AioRpcError as exc:
            trailer = dict(exc.trailing_metadata() or ())
            status = trailer.get("http-status")
            if status is None:
                rec.record(sched_ns, TRANSPORT_ERROR, None)
            else:
                rec.record(sched_ns, str(status), {"error": trailer.get("visionpipe-error")}, self.opts.deadline_ms)
            return
        names = [o.name for o in answer.outputs]
        blob = answer.raw_output_contents[names.index(RESULT_OUTPUT)]
        rec.record(sched_ns, "200", json.loads(last_bytes_element(blob)), self.opts.deadline_ms)
