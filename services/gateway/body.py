"""Reading an upload within limits of size and time, then checking it as decode would, before it is admitted.

The limits wrap the ASGI ``receive`` callable, so a raw body and a multipart form obey the same ones: a declared
``Content-Length`` over the limit is refused before a byte is read (with ``Expect: 100-continue`` the client then
never sends the body), a body streamed past it is cut off at the limit, and a body that stalls between chunks or
trickles in past the total deadline gets 408, and bodies held at once are bounded in bytes (429 beyond). The image
is then checked with decode's own ``check_header`` (the format, size, pixel count and container from the header
alone, no decoding), in a worker thread, so most bad input never enters the broker and none holds the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
# Header checks run here, one at a time: off the event loop, and with one thread at most competing with it for
# the GIL (parts of Pillow's header parsing are Python), so the loop keeps at least half of it however many
# uploads are checked at once. A check is milliseconds for any accepted file, however hostile.
CHECKS = ThreadPoolExecutor(1, thread_name_prefix="image-check")


class UploadBudget:
    """Bytes of request bodies this gateway holds at once, bounded: an upload beyond it is answered 429.

    Each upload holds its bytes from the moment they are announced (``Content-Length``) or arrive until its image
    is published, so many large uploads at once cannot take the process's memory with them. Used on the event
    loop only, so it needs no lock.
    """

    def __init__(self, total: int, retry_after_s: int) -> None:
        self.total, self.retry_after_s = total, retry_after_s
        self.used = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[Hold]:
        held = Hold(self)
        try:
            yield held
        finally:
            self.used -= held.bytes
            held.bytes = 0


class Hold:
    """One upload's share of the :class:`UploadBudget`; it grows as the body is announced or arrives."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget, self.bytes = budget, 0

    def grow_to(self, n: int) -> None:
        more = n - self.bytes
        if more <= 0:
            return
        b = self.budget
        others = b.used - self.bytes
        if others + n > b.total and others > 0:  # one upload alone is always let in
            raise GatewayError(
                429,
                "uploads_busy",
                f"the gateway holds {b.used} bytes of uploads in progress, up to gateway.max_upload_bytes_in_flight "
                f"{b.total}; retry shortly",
                retry_after_s=b.retry_after_s,
                close=True,
            )
        b.used += more
        self.bytes = n


class LimitedReceive:
    """``receive`` with a byte cap (413), the upload budget (429), and an idle-gap and total time limit (408)."""

    def __init__(
        self, receive: Receive, max_bytes: int, chunk_timeout_s: float, total_timeout_s: float, hold: Hold
    ) -> None:
        self._receive = receive
        self.max_bytes = max_bytes
        self.chunk_timeout_s = chunk_timeout_s
        self.deadline = time.monotonic() + total_timeout_s
        self.received = 0
        self.hold = hold

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
            self.hold.grow_to(self.received)
        return message


def _too_slow() -> GatewayError:
    return GatewayError(408, "body_timeout", "the request body did not arrive in time", close=True)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "too_large", f"the request body exceeds {limit} bytes", close=True)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _declared_length(request: Request, limit: int) -> int:
    declared = request.headers.get("content-length")
    if declared is None:
        return 0
    if not declared.isdigit():
        raise GatewayError(400, "bad_length", "Content-Length is not a number", close=True)
    if int(declared) > limit:
        raise _too_large(limit)
    return int(declared)


async def read_image(request: Request, settings: Settings, hold: Hold) -> tuple[bytes, Header]:
    """The image of a raw ``image/*`` body or of a multipart form's image part, checked as decode checks it.

    The body's bytes are held in ``hold`` (refused with 429 beyond the budget); the check runs in a worker thread,
    since a hostile header can take Pillow a while and nothing CPU-bound may hold the event loop.
    """
    kind = media_type(request)
    if kind.startswith("image/"):
        limit = settings.limits.max_image_bytes
    elif kind == "multipart/form-data":
        limit = settings.limits.max_image_bytes + MULTIPART_OVERHEAD_BYTES
    else:
        raise GatewayError(415, "unsupported_media_type", "send the image as image/* or as multipart/form-data")
    data = await read_body(request, settings, hold, limit, None if kind.startswith("image/") else _form_image)
    return data, await check_image(data, settings)


async def read_body(
    request: Request,
    settings: Settings,
    hold: Hold,
    limit: int,
    parse: Callable[[Request], Awaitable[bytes]] | None = None,
) -> bytes:
    """The request's body (or what ``parse`` reads of it), within ``limit`` bytes, the upload budget and time."""
    hold.grow_to(_declared_length(request, limit))
    gw = settings.gateway
    receive = LimitedReceive(request.receive, limit, gw.body_chunk_timeout_s, gw.body_timeout_s, hold)
    limited = Request(request.scope, receive)
    try:
        return await (limited.body() if parse is None else parse(limited))
    except ClientDisconnect:
        raise GatewayError(400, "client_disconnected", "the client went away during the upload", close=True) from None


async def check_image(data: bytes, settings: Settings) -> Header:
    """Decode's header check of one image, on the checking thread: 422 bad_image when decode would refuse it."""
    try:
        return await asyncio.get_running_loop().run_in_executor(CHECKS, check_header, data, settings.limits)
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
