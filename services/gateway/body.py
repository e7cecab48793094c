"""Reading an upload within limits of size and time, then checking it as decode would, before it is admitted.

The limits wrap the ASGI ``receive`` callable, so a raw body and a multipart form obey the same ones: a declared
``Content-Length`` over the limit is refused before a byte is read (with ``Expect: 100-continue`` the client then
never sends the body), a body streamed past it is cut off at the limit, and a body that stalls between chunks or
trickles in past the total deadline gets 408. The image is then checked with decode's own ``check_header`` (the
format, size and pixel count from the header alone, no decoding), so most bad input never enters the broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from visionpipe.services.decode.images import BadImage, Header, check_header
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.settings import Settings

# Room for a multipart envelope around the image: boundaries and part headers are far smaller than this.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# A multipart upload is one file part, "image", and nothing else: the OpenAPI document says so, and a part the
# gateway would silently ignore is more likely a client's mistake (a misspelt name) than something to drop.
IMAGE_FIELD = "image"
# Starlette's caps while parsing: a form of thousands of tiny fields costs parsing, not bytes.
MAX_FORM_FIELDS = 4


class LimitedReceive:
    """``receive`` with a byte cap (413) and an idle-gap and total time limit on the body (408)."""

    def __init__(self, receive: Receive, max_bytes: int, chunk_timeout_s: float, total_timeout_s: float) -> None:
        self._receive = receive
        self.max_bytes = max_bytes
        self.chunk_timeout_s = chunk_timeout_s
        self.deadline = time.monotonic() + total_timeout_s
        self.received = 0

    async def __call__(self) -> Message:
        timeout = min(self.chunk_timeout_s, self.deadline - time.monotonic())
        if timeout <= 0:
            raise _too_slow()
        try:
            async with asyncio.timeout(timeout):
                message = await self._receive()
        except TimeoutError:
            raise _too_slow() from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                raise _too_large(self.max_bytes)
        return message


def _too_slow() -> GatewayError:
    return GatewayError(408, "body_timeout", "the request body did not arrive in time", close=True)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "too_large", f"the request body exceeds {limit} bytes", close=True)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise GatewayError(400, "bad_length", "Content-Length is not a number", close=True)
    if int(declared) > limit:
        raise _too_large(limit)


async def read_image(request: Request, settings: Settings) -> tuple[bytes, Header]:
    """The image of a raw ``image/*`` body or of a multipart form's image part, checked as decode checks it."""
    kind = media_type(request)
    if kind.startswith("image/"):
        limit = settings.limits.max_image_bytes
    elif kind == "multipart/form-data":
        limit = settings.limits.max_image_bytes + MULTIPART_OVERHEAD_BYTES
    else:
        raise GatewayError(415, "unsupported_media_type", "send the image as image/* or as multipart/form-data")
    _declared_length(request, limit)
    gw = settings.gateway
    limited = Request(request.scope, LimitedReceive(request.receive, limit, gw.body_chunk_timeout_s, gw.body_timeout_s))
    try:
        data = await (limited.body() if kind.startswith("image/") else _form_image(limited))
    except ClientDisconnect:
        raise GatewayError(400, "client_disconnected", "the client went away during the upload", close=True) from None
    try:
        return data, check_header(data, settings.limits)
    except BadImage as exc:
        raise GatewayError(422, "bad_image", exc.reason) from None


async def _form_image(request: Request) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except HTTPException as exc:  # Starlette's answer to a malformed form: ours is a 422 with a reason
        raise GatewayError(422, "bad_multipart", str(exc.detail)) from None
    try:
        part: Any = form.get(IMAGE_FIELD)
        if not isinstance(part, UploadFile):
            raise GatewayError(422, "bad_multipart", "the form has no file part named 'image'")
        others = sorted({name for name in form if name != IMAGE_FIELD})
        if others:
            raise GatewayError(422, "bad_multipart", f"the form may hold only the file part 'image', not {others}")
        return await part.read()
    finally:
        await form.close()
