"""The streams API: ``POST /v1/streams``, ``GET /v1/streams``, ``GET``/``DELETE /v1/streams/{id}``.

A FastAPI ``APIRouter`` built around anything with the registry's four methods (:class:`StreamControl`):
``visionpipe ingest`` serves it over its own :class:`~.registry.StreamRegistry`, and the HTTP gateway can
mount the same router over a client of that service, so both speak one API with one OpenAPI schema.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter, HTTPException, status

from visionpipe.services.ingest.models import StreamExists, StreamInfo, StreamList, UnknownStream
from visionpipe.settings import StreamSource

PREFIX = "/v1/streams"


class StreamControl(Protocol):
    async def add(self, spec: StreamSource) -> StreamInfo: ...

    def list(self) -> list[StreamInfo]: ...

    def get(self, stream_id: str) -> StreamInfo: ...

    async def remove(self, stream_id: str) -> StreamInfo: ...


def _not_found(stream_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no stream {stream_id!r}")


def streams_router(control: StreamControl) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["streams"])

    @router.post("", status_code=status.HTTP_201_CREATED, responses={409: {}, 422: {}})
    async def add_stream(spec: StreamSource) -> StreamInfo:
        """Start ingesting a source; its frames enter the pipeline at the stream's fps and policy."""
        try:
            return await control.add(spec)
        except StreamExists:
            raise HTTPException(status.HTTP_409_CONFLICT, f"stream {spec.id!r} exists; DELETE it first") from None
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None

    @router.get("")
    async def list_streams() -> StreamList:
        """Every stream with its state and counters, finished and failed ones included until removed."""
        return StreamList(streams=control.list())

    @router.get("/{stream_id}", responses={404: {}})
    async def get_stream(stream_id: str) -> StreamInfo:
        try:
            return control.get(stream_id)
        except UnknownStream:
            raise _not_found(stream_id) from None

    @router.delete("/{stream_id}", responses={404: {}})
    async def remove_stream(stream_id: str) -> StreamInfo:
        """Stop the stream (its end-of-stream message goes to the results) and forget it; returns its final counts."""
        try:
            return await control.remove(stream_id)
        except UnknownStream:
            raise _not_found(stream_id) from None

    return router
