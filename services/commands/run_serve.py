"""``visionpipe run --serve``: every stage and the gateway in one process on the embedded broker, for a newcomer.

The same code as the services (``LocalStages``, the gateway's uvicorn server), as tasks of one
event loop, so a person can open the page, drop an image and see the pipeline answer without a broker, Docker
or a second terminal. Ctrl-C stops the server, then the stages.
"""

from __future__ import annotations

import asyncio
import contextlib

from rich.console import Console

from visionpipe.broker import redact_url
from visionpipe.ingress import ensure_pipeline_streams
from visionpipe.services.commands.preflight import connect_or_explain
from visionpipe.services.gateway.server import GatewayServer, make_server
from visionpipe.services.gateway.service import Gateway
from visionpipe.services.models.loading import RANDOM
from visionpipe.services.runtime.local import STARTED_POLL_S, LocalStages
from visionpipe.settings import Settings


async def serve_locally(settings: Settings, console: Console) -> None:
    broker = await connect_or_explain(settings)
    await ensure_pipeline_streams(broker, settings)
    try:
        async with LocalStages(broker, settings) as stages:
            gateway = Gateway(settings, broker=broker)
            server = make_server(gateway)
            serving = asyncio.create_task(server.serve(), name="gateway")
            try:
                await _announce(settings, console, stages, gateway, server, serving)
                await serving
            finally:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await serving
    finally:
        await broker.close()


async def _announce(
    settings: Settings,
    console: Console,
    stages: LocalStages,
    gateway: Gateway,
    server: GatewayServer,
    serving: asyncio.Task[None],
) -> None:
    """Once a request sent now will be served (the gateway is ready, and sees every stage ready): where to send it."""
    console.print(f"starting decode, detector, classifier and the gateway on {redact_url(settings.broker.url)}…")
    await stages.wait_started(others=[serving])
    while not (server.started and gateway.ready and gateway.stages_ready):
        stages.check(others=[serving])
        await asyncio.sleep(STARTED_POLL_S)
    url = f"http://{settings.service.host}:{server.port}"
    for w in stages.workers:
        if w.stage.weights == RANDOM:
            console.print(f"[bold red]{w.name} has RANDOM weights: its outputs are meaningless[/]")
    console.print(
        f"[bold]visionpipe is serving on {url}/[/]  (drop an image on the page; API docs {url}/docs)", soft_wrap=True
    )
    console.print(f"  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' {url}/v1/detect", soft_wrap=True)
    console.print("Ctrl-C stops it.")
