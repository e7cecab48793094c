"""The streams API: ``POST /v1/streams``, ``GET /v1/streams``, ``GET``/``DELETE /v1/streams/{id}``.

A FastAPI ``APIRouter`` built around anything with the registry's four methods (:class:`StreamControl`):
``visionpipe ingest`` serves it over its own :class:`~.registry.StreamRegistry`, and the HTTP gateway
mounts the same router over :class:`~.remote.RemoteStreams`, a client of that service, so both speak one
API with one OpenAPI schema. ``list`` and ``get`` may answer at once (the registry, in process) or be
awaited (the client, over HTTP).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from fastapi import APIRouter, HTTPException, status

from visionpipe.services.ingest.schema import StreamExists, StreamInfo, StreamList, UnknownStream
from visionpipe.settings import StreamSource

PREFIX = "/v1/streams"
T = TypeVar("T")


class StreamControl(Protocol):
    async def add(self, spec: StreamSource) -> StreamInfo: ...

    def list(self) -> list[StreamInfo] | Awaitable[list[StreamInfo]]: ...

    def get(self, stream_id: str) -> StreamInfo | Awaitable[StreamInfo]: ...

    async def remove(self, stream_id: str) -> StreamInfo: ...


async def _answer(ask: Callable[[], T | Awaitable[T]], stream_id: str | None = None) -> T:
    """The control's answer, its refusals as HTTP errors (the same ones whether it is in process or remote)."""
    try:
        value = ask()
        return await value if inspect.isawaitable(value) else value
    except StreamExists:
        raise HTTPException(status.HTTP_409_CONFLICT, f"stream {stream_id!r} exists; DELETE it first") from None
    except UnknownStream:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no stream {stream_id!r}") from None
    except ConnectionError as exc:  # the gateway's client of an ingest service that does not answer
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


def streams_router(control: StreamControl, check: Callable[[StreamSource], None] | None = None) -> APIRouter:
    """The routes over ``control``; ``check`` refuses (``ValueError``: 422) a source the API may not add."""
    router = APIRouter(prefix=PREFIX, tags=["streams"])

    async def add(spec: StreamSource) -> StreamInfo:
        if check is not None:
            check(spec)
        return await control.add(spec)

    @router.post("", status_code=status.HTTP_201_CREATED, responses={409: {}, 422: {}, 502: {}})
    async def add_stream(spec: StreamSource) -> StreamInfo:
        """Start ingesting a source; its frames enter the pipeline at the stream's fps and policy."""
        return await _answer(lambda: add(spec), spec.id)

    @router.get("", responses={502: {}})
    async def list_streams() -> StreamList:
        """Every stream with its state and counters, finished and failed ones included until removed."""
        return StreamList(streams=await _answer(control.list))

    @router.get("/{stream_id}", responses={404: {}, 502: {}})
    async def get_stream(stream_id: str) -> StreamInfo:
        return await _answer(lambda: control.get(stream_id), stream_id)

    @router.delete("/{stream_id}", responses={404: {}, 502: {}})
    async def remove_stream(stream_id: str) -> StreamInfo:
        """Stop the stream (its end-of-stream message goes to the results) and forget it; returns its final counts."""
        return await _answer(lambda: control.remove(stream_id), stream_id)

    return router
