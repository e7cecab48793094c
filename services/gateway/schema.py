"""The gateway's public JSON: the models its OpenAPI document is built from, and the image request bodies.

The result fields follow the pipeline's result payload (``box``, ``score``, ``label``, ``label_name``,
``top_k``), so what the classifier writes is what a client reads; the per-stage split is
``visionpipe.breakdown``'s categories, the same ``visionpipe run`` and the load generator report.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from visionpipe.breakdown import CATEGORIES


class TopK(BaseModel):
    label: int
    name: str | None = None
    score: float


class Detection(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the original image", min_length=4, max_length=4)
    score: float = Field(description="detector score")
    label: int = Field(description="detector class id")
    label_name: str | None = Field(None, description="detector class name")
    top_k: list[TopK] = Field(default_factory=list, description="classifier labels of the box's crop, best first")


class ImageSize(BaseModel):
    width: int = Field(description="as displayed: after the EXIF orientation")
    height: int = Field(description="as displayed: after the EXIF orientation")
    orientation: int = Field(
        1, description="the EXIF orientation (1-8) the file carried, already applied: boxes are as the image is shown"
    )


class DeadlineMet(BaseModel):
    met: bool = Field(description="whether the result reached the gateway by the request's deadline")
    late_ms: float = Field(description="how late it was (0 when met)")
    stage: str | None = Field(None, description="when late: the first stage that published it after the deadline")


class DetectResult(BaseModel):
    status: str = Field("done", description="done")
    request_id: str
    image: ImageSize
    objects: list[Detection]
    weights: dict[str, str] = Field(default_factory=dict, description="which weights each model ran with")
    timings_ms: dict[str, float] = Field(
        description="where the request's time went: " + ", ".join(CATEGORIES) + ", and the total"
    )
    deadline: DeadlineMet | None = Field(None, description="present when the request had a deadline")


class Accepted(BaseModel):
    request_id: str
    status: str = Field("accepted", description="accepted: poll result_url for the result")
    result_url: str


class Pending(BaseModel):
    request_id: str
    status: str = Field("pending", description="pending: admitted, no result yet")


class ErrorBody(BaseModel):
    error: str = Field(
        description="machine-readable code, e.g. too_large, bad_image, backpressure, deadline_infeasible, "
        "deadline_exceeded, gave_up, timeout"
    )
    detail: str = Field(description="what went wrong, for a person")
    request_id: str | None = None
    stage: str | None = Field(None, description="deadline_exceeded: the stage that knew the deadline was lost")
    late_ms: float | None = Field(None, description="deadline_exceeded: how late the request would have been")


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


def upload_errors(auth: bool) -> dict[int | str, dict[str, Any]]:
    """The errors of an endpoint that takes an image."""
    out: dict[int | str, dict[str, Any]] = {
        400: error("a malformed request (bad Content-Length, the client went away)"),
        408: error("the request body arrived too slowly"),
        409: error("this X-Request-Id was used before for a different image"),
        413: error("the body is larger than limits.max_image_bytes"),
        415: error("the body is neither image/* nor multipart/form-data"),
        422: error("not an image, or one decode would refuse (format, size, pixels), or a malformed form"),
        429: error(
            "the pipeline is behind (ingress backpressure), or expects to take longer than the request's deadline "
            "(deadline_infeasible): retry after Retry-After seconds"
        ),
        503: error("the gateway is not ready (starting, stopping, broker unreachable)"),
    }
    if auth:
        out[401] = error("a bearer token is required")
    return out


IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image: raw bytes with an image content type, or a form with a file part 'image'",
        "content": {
            **dict.fromkeys(IMAGE_TYPES, _BINARY),
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                    "additionalProperties": False,
                },
                "encoding": {"image": {"contentType": ", ".join(IMAGE_TYPES)}},
            },
        },
    }
}
