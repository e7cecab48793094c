"""The Open Inference Protocol over HTTP: /v2 routes, the JSON body and the binary tensor extension.

A request's body is read within the same limits as an upload to ``/v1/detect`` (bytes, time, the upload budget)
and held in that budget until its images are admitted. With ``Inference-Header-Content-Length`` the body is that
many bytes of JSON followed by the binary data of the inputs that say ``binary_data_size``, in order; the answer
uses the same layout for the outputs asked for as binary (or all, with ``binary_data_output``). Images sent in
the JSON itself are strings: base64 when the input's ``content_type`` parameter says so (JSON cannot hold raw
bytes). Errors are the protocol's ``{"error": message}``, with the native API's statuses and ``Retry-After``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from visionpipe.services.gateway.body import media_type, read_body
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.oip.model import (
    MODEL,
    OUTPUTS,
    VERSION,
    InferCall,
    admit,
    check_input,
    check_model,
    check_outputs,
    collect,
    invalid,
    metadata,
    raw,
    read_parameters,
    request_limit,
    server_metadata,
    split_bytes,
    tensors,
)
from visionpipe.services.gateway.service import Gateway

HEADER_LENGTH = "inference-header-content-length"
# The native API's bodies, sent here by mistake; anything else is read as the protocol's body (clients differ in
# what they declare: none, application/json, application/octet-stream, curl's form type).
REFUSED_TYPES = ("image/", "multipart/")
Handler = Callable[..., Awaitable[Response]]


class ProtocolError(BaseModel):
    error: str = Field(description="the code and the reason, e.g. 'bad_image: not an image: …'")
    code: str = Field(description="the native API's code: bad_request, invalid_request, backpressure, …")
    request_id: str | None = None
    stage: str | None = None
    late_ms: float | None = None
    expected_ms: float | None = None


def _error(description: str) -> dict[str, Any]:
    return {"model": ProtocolError, "description": description}


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("no such model or version (model_not_found)")}
INFER_ERRORS = {
    **NOT_FOUND,
    400: _error("not JSON, or a binary layout whose sizes do not add up (bad_request)"),
    408: _error("the request body arrived too slowly"),
    409: _error("this request id was used before for different images"),
    413: _error("an image or the body is too large"),
    415: _error("an image or multipart body: send the protocol's"),
    422: _error("a wrong input name, datatype or shape, unknown outputs or parameters, or a bad image"),
    429: _error("backpressure, uploads_busy or deadline_infeasible: retry after Retry-After seconds"),
    500: _error("the pipeline gave up on an image (gave_up)"),
    502: _error("a stage failed an image"),
    503: _error("the gateway is not ready or is stopping"),
    504: _error("deadline_exceeded, or no result within the wait (timeout)"),
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the protocol's inference request: JSON, or JSON then the inputs' bytes (with the "
        "Inference-Header-Content-Length header)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def oip_router(gw: Gateway, auth: Sequence[Any] = ()) -> APIRouter:
    """The /v2 routes; ``auth``: what the model's routes require (the server's metadata and probes stay open)."""
    api = APIRouter(prefix="/v2", tags=["open inference protocol"])

    @api.get("", summary="Server metadata")
    async def server() -> JSONResponse:
        return JSONResponse(server_metadata())

    @api.get("/health/live", summary="Live: the process answers")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @api.get(
        "/health/ready",
        summary="Ready: a request sent now will be served (as /readyz)",
        responses={503: {"description": "not ready"}},
    )
    async def ready() -> JSONResponse:
        ok = all((await gw.ready_checks()).values())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    for versioned in (False, True):
        prefix = "/models/{name}/versions/{version}" if versioned else "/models/{name}"
        for path, handler, method, summary, responses in (
            ("", _model_metadata, "GET", "Model metadata", NOT_FOUND),
            ("/ready", _model_ready(gw), "GET", "Model ready", {**NOT_FOUND, 503: _error("the model is not ready")}),
            ("/infer", _infer(gw), "POST", "Infer: encoded images in, boxes, labels and top-k out", INFER_ERRORS),
        ):
            api.add_api_route(
                prefix + path,
                _protocol(handler, versioned),
                methods=[method],
                summary=summary,
                dependencies=list(auth),
                responses={**responses, **({401: _error("a bearer token is required")} if auth else {})},
                openapi_extra=INFER_BODY if path == "/infer" else None,
            )
    return api


def _protocol(handler: Handler, versioned: bool) -> Handler:
    """The handler with its errors in the protocol's shape."""

    async def answer(request: Request, name: str, version: str) -> Response:
        try:
            return await handler(request, name, version)
        except GatewayError as exc:
            return exc.response(protocol=True)

    async def unversioned(request: Request, name: str) -> Response:
        return await answer(request, name, "")

    return answer if versioned else unversioned


async def _model_metadata(request: Request, name: str, version: str) -> Response:
    check_model(name, version)
    return JSONResponse(metadata())


def _model_ready(gw: Gateway) -> Handler:
    async def model_ready(request: Request, name: str, version: str) -> Response:
        check_model(name, version)
        ok = gw.ready and gw.stages_ready
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    return model_ready


def _infer(gw: Gateway) -> Handler:
    settings = gw.settings
    limit = request_limit(settings)

    async def infer(request: Request, name: str, version: str) -> Response:
        received = time.time_ns()
        check_model(name, version)
        if media_type(request).startswith(REFUSED_TYPES):
            raise GatewayError(415, "unsupported_media_type", "send the protocol's JSON or binary tensor layout")
        with gw.uploads.hold() as hold:
            body = await read_body(request, settings, hold, limit)
            doc, call, outputs = read_request(body, request.headers.get(HEADER_LENGTH), received)
            call.request_id = request.headers.get("x-request-id", call.request_id)
            read_parameters(_deadline_header(request), call)  # and checks the request id
            del body
            subs = await admit(gw, call)
        docs = await collect(gw, call, subs)
        ids = [s.request_id for s in subs]
        return encode_response(doc.get("id"), docs, outputs, ids)

    return infer


def _deadline_header(request: Request) -> dict[str, Any]:
    value = request.headers.get("x-deadline-ms")
    if value is None:
        return {}
    if not value.isdigit():
        raise invalid("X-Deadline-Ms must be a whole number of ms")
    return {"deadline_ms": int(value)}


def read_request(
    body: bytes, header_length: str | None, received_ns: int
) -> tuple[dict[str, Any], InferCall, dict[str, bool]]:
    """The request's JSON, its images, and the outputs asked for (name: whether as binary)."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > size:
            raise GatewayError(
                400, "bad_request", f"Inference-Header-Content-Length {header_length} is not within the body's {size}"
            )
        size = int(header_length)
    try:
        doc = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GatewayError(400, "bad_request", f"the request is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or len(doc["inputs"]) != 1:
        raise invalid("the request must be a JSON object with exactly one input, 'images'")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("parameters must be an object")
    images = _images(doc["inputs"][0], memoryview(body)[size:])
    call = InferCall(images, received_ns)
    read_parameters(params, call)
    return doc, call, _outputs(doc.get("outputs"), bool(params.get("binary_data_output")))


def _images(tensor: Any, binary: memoryview) -> list[bytes]:
    if not isinstance(tensor, dict):
        raise invalid("an input must be an object")
    params = tensor.get("parameters") or {}
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid("an input's shape must be a list of integers")
    if "binary_data_size" in params:
        declared = params["binary_data_size"]
        if not isinstance(declared, int) or declared != len(binary):
            raise GatewayError(
                400, "bad_request", f"binary_data_size {declared} is not the {len(binary)} bytes after the JSON"
            )
        images = split_bytes(binary)
    else:
        images = [_element(e, params.get("content_type")) for e in np.ravel(np.array(tensor.get("data"), object))]
    check_input(str(tensor.get("name")), str(tensor.get("datatype")), shape, len(images))
    return images


def _element(item: Any, content_type: Any) -> bytes:
    if not isinstance(item, str):
        raise invalid("a BYTES element in JSON must be a string (base64 with the content_type parameter 'base64')")
    if content_type == "base64":
        try:
            return base64.b64decode(item, validate=True)
        except binascii.Error:
            raise invalid("an element is not valid base64") from None
    return item.encode()


def _outputs(asked: Any, all_binary: bool) -> dict[str, bool]:
    if asked is None:
        return dict.fromkeys(OUTPUTS, all_binary)
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise invalid("outputs must be a list of objects with a name")
    wanted = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", all_binary)) for o in asked}
    check_outputs(list(wanted))
    return wanted


def encode_response(req_id: Any, docs: list[bytes], outputs: dict[str, bool], ids: list[str]) -> Response:
    arrays = tensors(docs)
    out: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in outputs.items():
        datatype = OUTPUTS[name][0]
        array = arrays[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = raw(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            items = array.ravel().tolist()
            tensor["data"] = [b.decode() for b in items] if datatype == "BYTES" else items
        out.append(tensor)
    doc: dict[str, Any] = {"model_name": MODEL, "model_version": VERSION, "outputs": out}
    doc["parameters"] = {"request_id": ",".join(ids)}
    if req_id is not None:
        doc["id"] = str(req_id)
    head = json.dumps(doc).encode()
    headers = {"X-Request-Id": ",".join(ids)}
    if not blobs:
        return Response(head, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(len(head))
    return Response(b"".join([head, *blobs]), media_type="application/octet-stream", headers=headers)
