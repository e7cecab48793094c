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
from visionpipe.services.gateway.answer import judge, wait_for_document
from visionpipe.services.gateway.auth import auth_dependencies
from visionpipe.services.gateway.body import read_image
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.gateway_metrics import MetricsMiddleware
from visionpipe.services.gateway.oip.rest import oip_router
from visionpipe.services.gateway.schema import (
    IMAGE_BODY,
    Accepted,
    DetectResult,
    Pending,
    error,
    upload_errors,
)
from visionpipe.services.gateway.service import REQUEST_ID_PATTERN, Gateway
from visionpipe.services.gateway.swagger_ui import add_docs

PAGE = files("visionpipe.services.gateway") / "static" / "index.html"

RequestIdHeader = Annotated[
    str | None,
    Header(alias="X-Request-Id", pattern=REQUEST_ID_PATTERN, description="your id: a retry with it is not redone"),
]
RequestIdPath = Annotated[str, PathParam(pattern=REQUEST_ID_PATTERN)]
# A deadline is for an answer a client waits for; an hour bounds what one may ask.
MAX_DEADLINE_MS = 3_600_000
DEADLINE_HELP = "answer by this many ms after the upload arrives: the result, 504 deadline_exceeded, or 429 at once"
DeadlineQuery = Annotated[
    int | None, Query(ge=1, le=MAX_DEADLINE_MS, description=DEADLINE_HELP + " (or X-Deadline-Ms)")
]
# Typed ``int`` with a None default rather than ``int | None``: documented as an integer, not "integer or null",
# which would tell clients that the word "null" is a valid header value.
DeadlineHeader = Annotated[
    int,
    Header(alias="X-Deadline-Ms", ge=1, le=MAX_DEADLINE_MS, description=DEADLINE_HELP + " (or ?deadline_ms=)"),
]


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
    app.include_router(oip_router(gateway, auth))
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
    _detect_route(api, gw)
    _submit_route(api, gw)
    _result_route(api, gw)
    return api


def _detect_route(api: APIRouter, gw: Gateway) -> None:
    settings = gw.settings.gateway
    max_wait_ms = int(settings.max_wait_s * 1000)
    upload = upload_errors(bool(gw.tokens))

    @api.post(
        "/detect",
        response_model=DetectResult,
        responses={
            **upload,
            500: error("the pipeline gave up on the request after repeated failures (gave_up)"),
            502: error("a stage gave up on the request"),
            504: error(
                "deadline_exceeded: a stage knew the deadline could not be met (stage, late_ms), or no answer came "
                "by it; timeout: no result within the wait; GET /v1/results/{request_id} later"
            ),
        },
        openapi_extra=IMAGE_BODY,
        summary="Detect and classify objects in an image, waiting for the result",
    )
    async def detect(
        request: Request,
        x_request_id: RequestIdHeader = None,
        timeout_ms: Annotated[int | None, Query(ge=0, le=max_wait_ms, description="how long to wait")] = None,
        deadline_ms: DeadlineQuery = None,
        x_deadline_ms: DeadlineHeader = None,  # type: ignore[assignment]
    ) -> Response:
        received = time.time_ns()
        with gw.uploads.hold() as hold:  # published: a waiting request holds no upload (up to max_image_bytes)
            image, _ = await read_image(request, gw.settings, hold)
            asked = gw.deadline_ms(deadline_ms if deadline_ms is not None else x_deadline_ms)
            sub = await gw.submit(image, x_request_id, received, claim=False, deadline_ms=asked)  # the id is ours
            del image
        wait_s = settings.wait_s if timeout_ms is None else timeout_ms / 1000
        doc = await wait_for_document(
            gw, sub, client_id=x_request_id is not None, asked_ms=asked, received_ns=received, wait_s=wait_s
        )
        return Response(doc, media_type="application/json", headers={"X-Request-Id": sub.request_id})


def _submit_route(api: APIRouter, gw: Gateway) -> None:
    upload = upload_errors(bool(gw.tokens))

    @api.post(
        "/requests",
        status_code=202,
        response_model=Accepted,
        responses=upload,
        openapi_extra=IMAGE_BODY,
        summary="Submit an image; fetch its result later",
    )
    async def submit(
        request: Request,
        x_request_id: RequestIdHeader = None,
        deadline_ms: DeadlineQuery = None,
        x_deadline_ms: DeadlineHeader = None,  # type: ignore[assignment]
    ) -> JSONResponse:
        received = time.time_ns()
        with gw.uploads.hold() as hold:
            image, _ = await read_image(request, gw.settings, hold)
            asked = gw.deadline_ms(deadline_ms if deadline_ms is not None else x_deadline_ms)
            rid = (await gw.submit(image, x_request_id, received, deadline_ms=asked)).request_id
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
            500: error("the pipeline gave up on the request after repeated failures (gave_up)"),
            502: error("a stage gave up on the request"),
            503: error("the gateway is not ready"),
            504: error("deadline_exceeded: a stage answered that the request's deadline could not be met"),
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
    """A stored document as the answer: the bytes as they are when done, an error when the pipeline refused it."""
    return Response(judge(doc, request_id), media_type="application/json", headers={"X-Request-Id": request_id})


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
        """Ready: a request sent now will be served (every stage has a consumer past its warm-up, still beating)."""
        checks = await gw.ready_checks()
        ok = all(checks.values())
        body = {"ready": ok, "checks": checks, "stages": gw.stage_states()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False, dependencies=private)
    async def metrics() -> Response:
        return Response(gw.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
