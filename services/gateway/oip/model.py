"""The whole pipeline as one Open Inference Protocol model, apart from how a request arrives (HTTP or gRPC).

Both faces turn their request into an :class:`InferCall` (the images of the one input tensor, and the request's
id and deadline) and call :func:`infer`, which admits each image exactly as ``POST /v1/detect`` does (decode's
header check, the same submission with its idempotency claim, backpressure and deadline admission) and waits for
each result on the same path (``answer.wait_for_document``), so an image gets the same answer and the same error,
status and reason whichever door it came through. :func:`tensors` then lays the results out as the model's
output tensors, padded to the most objects of any image in the batch (``counts`` says how many are real).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionpipe import __version__
from visionpipe.services.gateway.answer import wait_for_document
from visionpipe.services.gateway.body import check_image
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.service import REQUEST_ID_PATTERN, Gateway, Submitted
from visionpipe.settings import Settings

MODEL = "visionpipe"
VERSION = "1"  # one version: the pipeline the gateway's stages run now
PLATFORM = "visionpipe"
SERVER = "visionpipe"
EXTENSIONS = ["binary_tensor_data"]
INPUT = "images"
# Images of one request, at most: each becomes a submission of its own, and the request waits for all of them.
MAX_BATCH = 32
# Request parameters this model reads; the others (Triton's "timeout", "priority", …) are accepted and ignored.
DEADLINE_PARAM = "deadline_ms"
REQUEST_ID_PARAM = "request_id"

OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "boxes": ("FP32", [-1, -1, 4]),  # per image, per object: x1, y1, x2, y2 in the image's pixels as displayed
    "scores": ("FP32", [-1, -1]),
    "labels": ("INT32", [-1, -1]),  # -1 past an image's count
    "label_names": ("BYTES", [-1, -1]),
    "topk_labels": ("INT32", [-1, -1, -1]),  # the classifier's top-k of each object
    "topk_scores": ("FP32", [-1, -1, -1]),
    "topk_names": ("BYTES", [-1, -1, -1]),
    "counts": ("INT32", [-1]),  # objects found in each image
    "result_json": ("BYTES", [-1]),  # each image's whole result, as /v1/detect answers it
}
NUMPY = {"FP32": np.dtype("<f4"), "INT32": np.dtype("<i4"), "BYTES": np.dtype(object)}


def request_limit(settings: Settings) -> int:
    """Bytes of one request, at most: a batch of the largest images, within what the gateway holds at once."""
    return min(settings.gateway.max_upload_bytes_in_flight, MAX_BATCH * settings.limits.max_image_bytes + 65536)


def metadata() -> dict[str, Any]:
    return {
        "name": MODEL,
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in OUTPUTS.items()],
    }


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER, "version": __version__, "extensions": EXTENSIONS}


def check_model(name: str, version: str = "") -> None:
    if name != MODEL or version not in ("", VERSION):
        where = f"{name!r}" + (f" version {version!r}" if version else "")
        raise GatewayError(404, "model_not_found", f"no model {where}: this server has {MODEL!r} version {VERSION}")


def invalid(detail: str) -> GatewayError:
    return GatewayError(422, "invalid_request", detail)


def check_input(name: str, datatype: str, shape: Sequence[int], count: int) -> None:
    """One ``BYTES`` tensor named ``images`` whose shape holds ``count`` elements, 1 to ``MAX_BATCH`` of them."""
    if name != INPUT:
        raise invalid(f"unexpected input {name!r}: the model's one input is {INPUT!r}")
    if datatype != "BYTES":
        raise invalid(f"input {INPUT!r} has datatype {datatype!r}: it must be BYTES, one encoded image an element")
    size = int(np.prod(shape)) if shape else 1
    if any(d < 0 for d in shape) or size != count:
        raise invalid(f"input {INPUT!r} has shape {list(shape)}, which does not hold its {count} elements")
    if not 1 <= count <= MAX_BATCH:
        raise invalid(f"input {INPUT!r} holds {count} images: send 1 to {MAX_BATCH}")


def check_outputs(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise invalid(f"unexpected outputs {unknown}: the model's outputs are {list(OUTPUTS)}")


@dataclass
class InferCall:
    """One protocol request, read: its images and what the gateway needs besides them."""

    images: list[bytes]
    received_ns: int
    request_id: str | None = None  # the client's idempotency key (X-Request-Id, or the request_id parameter)
    deadline_ms: float | None = None


def read_parameters(params: Mapping[str, Any], call: InferCall) -> None:
    """The request's ``deadline_ms`` and ``request_id`` parameters, where the headers did not set them already."""
    deadline = params.get(DEADLINE_PARAM)
    if deadline is not None and call.deadline_ms is None:
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not 1 <= deadline <= 3_600_000:
            raise invalid(f"parameter {DEADLINE_PARAM!r} must be a number of ms from 1 to 3600000")
        call.deadline_ms = float(deadline)
    rid = params.get(REQUEST_ID_PARAM)
    if rid is not None and call.request_id is None:
        call.request_id = str(rid)
    check_request_id(call.request_id)


def check_request_id(request_id: str | None) -> None:
    if request_id is not None and not re.fullmatch(REQUEST_ID_PATTERN, request_id):
        raise invalid(f"request id {request_id[:140]!r} does not match {REQUEST_ID_PATTERN}")


def image_ids(request_id: str | None, count: int) -> list[str | None]:
    """Each image's request id: the client's for one image, its ``.0``, ``.1``, … for a batch."""
    if request_id is None:
        return [None] * count
    return [request_id] if count == 1 else [f"{request_id}.{i}" for i in range(count)]


async def admit(gw: Gateway, call: InferCall) -> list[Submitted]:
    """Check and admit every image of ``call``; after this the request holds no image (see :func:`collect`)."""
    if not gw.ready:
        raise gw.not_ready()
    limit = gw.settings.limits.max_image_bytes
    for image in call.images:  # all checked first: a bad image refuses the request before any is admitted
        if len(image) > limit:
            raise GatewayError(413, "too_large", f"an image of {len(image)} bytes exceeds {limit} bytes")
        await check_image(image, gw.settings)
    asked = gw.deadline_ms(call.deadline_ms)
    ids = image_ids(call.request_id, len(call.images))
    pairs = zip(call.images, ids, strict=True)
    subs = await _first_error(*(gw.submit(i, r, call.received_ns, claim=False, deadline_ms=asked) for i, r in pairs))
    call.images = []  # published: the request holds no upload while it waits
    call.deadline_ms = asked
    return subs


async def collect(gw: Gateway, call: InferCall, subs: Sequence[Submitted]) -> list[bytes]:
    """Each admitted image's result document, in order, judged as /v1/detect judges it (its errors raised)."""
    wait_s = gw.settings.gateway.wait_s
    client_id = call.request_id is not None
    return await _first_error(
        *(
            wait_for_document(
                gw, sub, client_id=client_id, asked_ms=call.deadline_ms, received_ns=call.received_ns, wait_s=wait_s
            )
            for sub in subs
        )
    )


async def _first_error(*steps: Any) -> list[Any]:
    """Every step run to its end (none left behind half-done); the first error raised, else their results."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def tensors(docs: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The model's outputs for these results, as arrays (BYTES as object arrays of ``bytes``)."""
    results = [json.loads(d) for d in docs]
    objects = [r.get("objects") or [] for r in results]
    n, most = len(docs), max((len(o) for o in objects), default=0)
    k = max((len(o.get("top_k") or []) for objs in objects for o in objs), default=0)
    out = {
        "boxes": np.zeros((n, most, 4), NUMPY["FP32"]),
        "scores": np.zeros((n, most), NUMPY["FP32"]),
        "labels": np.full((n, most), -1, NUMPY["INT32"]),
        "label_names": np.full((n, most), b"", object),
        "topk_labels": np.full((n, most, k), -1, NUMPY["INT32"]),
        "topk_scores": np.zeros((n, most, k), NUMPY["FP32"]),
        "topk_names": np.full((n, most, k), b"", object),
        "counts": np.array([len(o) for o in objects], NUMPY["INT32"]),
        "result_json": np.array(list(docs) or [], object).reshape(n),
    }
    for i, objs in enumerate(objects):
        for j, o in enumerate(objs):
            out["boxes"][i, j] = o["box"]
            out["scores"][i, j] = o["score"]
            out["labels"][i, j] = o["label"]
            out["label_names"][i, j] = str(o.get("label_name") or "").encode()
            for t, top in enumerate(o.get("top_k") or []):
                out["topk_labels"][i, j, t] = top["label"]
                out["topk_scores"][i, j, t] = top["score"]
                out["topk_names"][i, j, t] = str(top.get("name") or "").encode()
    return out


def raw(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's bytes as the protocol lays them out: little-endian, row-major; BYTES as length-prefixed items."""
    if datatype == "BYTES":
        return b"".join(len(b).to_bytes(4, "little") + b for b in array.ravel())
    return np.ascontiguousarray(array, NUMPY[datatype]).tobytes()


def split_bytes(data: bytes | memoryview) -> list[bytes]:
    """The elements of a BYTES tensor's raw bytes (each a 4-byte little-endian length, then that many bytes)."""
    view, items, at = memoryview(data), [], 0
    while at < len(view):
        if at + 4 > len(view):
            raise invalid("a BYTES element's 4-byte length is cut off")
        size = int.from_bytes(view[at : at + 4], "little")
        at += 4
        if at + size > len(view):
            raise invalid(f"a BYTES element says {size} bytes, but only {len(view) - at} remain")
        items.append(bytes(view[at : at + size]))
        at += size
    return items
