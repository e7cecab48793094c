"""schemathesis against the gateway's own OpenAPI document: every answer must be one the document promises.

In-process over ASGI (``schemathesis.openapi.from_asgi``); the app's lifespan starts the gateway and the
pass-through stages on the embedded broker, so valid images get real results. Image bodies are drawn as real
images of random size and colour (``format: binary`` alone would be random bytes, which we rightly refuse);
schemathesis still sends invalid bodies, headers and parameters of its own.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from tests.loadgen.passthrough import run_stage
from tests.services.gateway.helpers import gateway_settings
from visionpipe.services.gateway.app import create_app
from visionpipe.services.gateway.service import Gateway
from visionpipe.topology import STAGES


@st.composite
def images(draw: Any, fmt: str) -> bytes:
    size = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    colour = draw(st.tuples(*[st.integers(0, 255)] * 3))
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


schemathesis.openapi.media_type("image/jpeg", images("JPEG"))
schemathesis.openapi.media_type("image/png", images("PNG"))
schemathesis.openapi.media_type("image/webp", images("WEBP"))


def app_with_pipeline() -> FastAPI:
    """The gateway app whose lifespan also runs the pass-through stages.

    schemathesis ends an app's lifespan after each test function and starts it again for the next; the pipeline
    is started on the first startup and kept (on schemathesis' one event loop) until the process ends, so each
    operation's test does not pay for it again and no request of one is cut off by the next one's start.
    """
    gw_settings = gateway_settings(f"st{uuid.uuid4().hex[:8]}", gateway={"wait_s": 5.0, "max_wait_s": 2.0})
    gateway = Gateway(gw_settings)
    app = create_app(gateway, manage=False)
    running: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not running:
            running.extend(asyncio.create_task(run_stage(s, gw_settings, asyncio.Event())) for s in STAGES)
            await gateway.start()
            while not gateway.ready:
                await asyncio.sleep(0.02)
        yield

    app.router.lifespan_context = lifespan
    return app


schema = schemathesis.openapi.from_asgi("/openapi.json", app_with_pipeline())
# An unknown header is no error (HTTP servers ignore what they do not know): not a negative case to send.
schema.config.generation.update(allow_extra_parameters=False)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_openapi_document(case: schemathesis.Case) -> None:
    """Every check, except that a documented 5xx (503 not ready, 504 wait ran out) is an answer, not a crash."""
    response = case.call()
    assert response.status_code != 500, response.text
    case.validate_response(response, excluded_checks=[schemathesis.checks.not_a_server_error])
