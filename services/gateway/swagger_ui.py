"""``/docs``: Swagger UI from assets served by the gateway itself.

FastAPI's default page loads Swagger UI from a CDN, so on a closed network (CI, an air-gapped site) it renders
blank. The assets come from the ``fastapi-offline`` wheel (Swagger UI and ReDoc, a few MB); only its static
files are used, not its app factory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse
from starlette.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/_docs"
OPENAPI_URL = "/openapi.json"


def add_docs(app: FastAPI, dependencies: Sequence[Any] = ()) -> None:
    """``/docs`` (and, when ``dependencies`` guard it, the ``/openapi.json`` the app then does not serve itself)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    if app.openapi_url is None:

        @app.get(OPENAPI_URL, include_in_schema=False, dependencies=list(dependencies))
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=list(dependencies))
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or OPENAPI_URL,
            title=f"{app.title} — API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )
