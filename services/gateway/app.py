"""The gateway's HTTP face: FastAPI routes over a :class:`~visionpipe.services.gateway.service.Gateway`.

FastAPI (on Starlette) for its OpenAPI document, built from the same models the handlers return, so the spec
cannot drift from the code and schemathesis can test one against the other. The image endpoints read the raw
request themselves (``body.read_image``): no framework parsing, buffering or validation of the image.
Other features mount beside these with ``routers`` (FastAPI ``APIRouter``s, e.g. video ingest's /v1/streams).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time, and those
# name values local to the factories (the wait bound), which postponed annotations could not resolve.
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from visionpipe import __version__
from visionpipe.services.gateway.auth import auth_dependencies
from visionpipe.services.gateway.body import read_image
from visionpipe.services.gateway.documents import failure, is_done
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.gateway_metrics import MetricsMiddleware
from visionpipe.services.gateway.schema import (
    IMAGE_BODY,
    Accepted,
    DetectResult,
    Pending,
    error,
    upload_errors,
)
from visionpipe.services.gateway.service import Gateway
from visionpipe.services.gateway.swagger_ui import add_docs

# Request ids a client may choose: printable, no separators that a key, a URL or a log line would trip on.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
PAGE = files("visionpipe.services.gateway") / "static" / "index.html"

RequestIdHeader = Annotated[
    str | None,
    Header(alias="X-Request-Id", pattern=REQUEST_ID_PATTERN, description="your id: a retry with it is not redone"),
]
RequestIdPath = Annotated[str, PathParam(pattern=REQUEST_ID_PATTERN)]


def create_app(gateway: Gateway, routers: Sequence[APIRouter] = (), *, manage: bool = True) -> FastAPI:
    """The ASGI app; ``manage``: start and stop ``gateway`` with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            await gateway.start()
        try:
            yield
        finally:
            if manage:
                await gateway.stop()

    auth = auth_dependencies(gateway.tokens)
    # With tokens on, the probes and the page stay open; /metrics and the API's description too, unless asked.
    private = auth if gateway.settings.gateway.protect_docs_and_metrics else []
    app = FastAPI(
        title="visionpipe gateway",
        version=__version__,
        description="Submit an image, get its boxes, labels and per-stage timings.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None if private else "/openapi.json",
        lifespan=lifespan,
    )
    _errors(app)
    app.include_router(_api(gateway), dependencies=auth)
    for router in routers:
        app.include_router(router, dependencies=auth)
    _service_routes(app, gateway, private)
    add_docs(app, private)
    if gateway.settings.gateway.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=gateway.settings.gateway.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After", "Location"],
        )
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)
    return app


def _api(gw: Gateway) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["detect"])
    _upload_routes(api, gw)
    _result_route(api, gw)
    return api


def _upload_routes(api: APIRouter, gw: Gateway) -> None:
    settings = gw.settings.gateway
    max_wait_ms = int(settings.max_wait_s * 1000)
    upload = upload_errors(bool(gw.tokens))

    @api.post(
        "/detect",
        response_model=DetectResult,
        responses={
            **upload,
            502: error("a stage gave up on the request"),
            504: error("no result within the wait; GET /v1/results/{request_id} later"),
        },
        openapi_extra=IMAGE_BODY,
        summary="Detect and classify objects in an image, waiting for the result",
    )
    async def detect(
        request: Request,
        x_request_id: RequestIdHeader = None,
        timeout_ms: Annotated[int | None, Query(ge=0, le=max_wait_ms, description="how long to wait")] = None,
    ) -> Response:
        received = time.time_ns()
        with gw.uploads.hold() as hold:  # published: a waiting request holds no upload (up to max_image_bytes)
            image, _ = await read_image(request, gw.settings, hold)
            sub = await gw.submit(image, x_request_id, received, claim=False)  # the client learns the id from us
            del image
        rid = sub.request_id
        wait_s = settings.wait_s if timeout_ms is None else timeout_ms / 1000
        doc = await gw.wait(rid, sub.claim, min(wait_s, settings.max_wait_s))
        if doc is None:
            if x_request_id is None:
                await gw.claim(rid, sub.claim)  # now the client has the id: a GET of it must say "pending"
            raise GatewayError(
                504, "timeout", f"no result within {wait_s:g} s; it can be fetched later", request_id=rid
            )
        return document_response(doc, rid)

    @api.post(
        "/requests",
        status_code=202,
        response_model=Accepted,
        responses=upload,
        openapi_extra=IMAGE_BODY,
        summary="Submit an image; fetch its result later",
    )
    async def submit(request: Request, x_request_id: RequestIdHeader = None) -> JSONResponse:
        received = time.time_ns()
        with gw.uploads.hold() as hold:
            image, _ = await read_image(request, gw.settings, hold)
            rid = (await gw.submit(image, x_request_id, received)).request_id
        url = f"/v1/results/{rid}"
        body = Accepted(request_id=rid, result_url=url).model_dump()
        return JSONResponse(body, status_code=202, headers={"Location": url, "X-Request-Id": rid})


def _result_route(api: APIRouter, gw: Gateway) -> None:
    max_wait_ms = int(gw.settings.gateway.max_wait_s * 1000)

    @api.get(
        "/results/{request_id}",
        response_model=DetectResult,
        responses={
            202: {"model": Pending, "description": "admitted, no result yet"},
            404: error("no such request, or its result expired"),
            422: error("the image could not be decoded, or the id is malformed"),
            502: error("a stage gave up on the request"),
            503: error("the gateway is not ready"),
        },
        summary="The result of a submitted image",
    )
    async def result(
        request_id: RequestIdPath,
        wait_ms: Annotated[int, Query(ge=0, le=max_wait_ms, description="wait up to this long for it")] = 0,
    ) -> Response:
        if not gw.ready:
            raise gw.not_ready()
        claim = await gw.claimed(request_id)  # the result answered is the one of the submission holding the id now
        if claim is None:  # nothing will come: no reason to wait
            raise GatewayError(404, "not_found", "no such request, or its result expired", request_id=request_id)
        doc = await gw.wait(request_id, claim, wait_ms / 1000)
        if doc is None:
            return JSONResponse(Pending(request_id=request_id).model_dump(), status_code=202)
        return document_response(doc, request_id)


def document_response(doc: bytes, request_id: str) -> Response:
    """A stored document as the answer: the bytes as they are when done, an error when a stage refused it."""
    if is_done(doc):
        return Response(doc, media_type="application/json", headers={"X-Request-Id": request_id})
    f = failure(doc)
    if f.get("bad_input"):
        raise GatewayError(422, "bad_image", f"{f.get('stage')}: {f.get('reason')}", request_id=request_id)
    raise GatewayError(502, "pipeline_failed", f"{f.get('stage')}: {f.get('reason')}", request_id=request_id)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return GatewayError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}").response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return GatewayError(exc.status_code, "http_error", str(exc.detail), headers=exc.headers).response()


def _service_routes(app: FastAPI, gw: Gateway, private: list[Any]) -> None:
    page = Path(str(PAGE)).read_text()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await gw.ready_checks()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False, dependencies=private)
    async def metrics() -> Response:
        return Response(gw.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
