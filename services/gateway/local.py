"""``visionpipe run --serve``: every stage and the gateway in one process on the embedded broker, for a newcomer.

The same code as the services (``make_worker`` for each stage, the gateway's uvicorn server), as tasks of one
event loop, so a person can open the page, drop an image and see the pipeline answer without a broker, Docker
or a second terminal. Ctrl-C stops the server, then the stages.
"""

from __future__ import annotations

import asyncio
import contextlib

from rich.console import Console

from visionpipe.broker import connect, redact_url
from visionpipe.ingress import ensure_pipeline_streams
from visionpipe.metrics import Metrics
from visionpipe.services.gateway.server import make_server
from visionpipe.services.gateway.service import Gateway
from visionpipe.services.serve import make_worker
from visionpipe.services.weights import RANDOM
from visionpipe.settings import Settings
from visionpipe.topology import STAGES

STARTED_POLL_S = 0.1


async def serve_locally(settings: Settings, console: Console) -> None:
    broker = await connect(settings=settings)
    await ensure_pipeline_streams(broker, settings)
    workers = [make_worker(name, broker, settings, Metrics()) for name in STAGES]
    stages = [asyncio.create_task(w.run(), name=f"stage-{w.name}") for w in workers]
    server = make_server(Gateway(settings, broker=broker))
    serving = asyncio.create_task(server.serve(), name="gateway")
    try:
        console.print(f"starting decode, detector, classifier and the gateway on {redact_url(settings.broker.url)}…")
        while not (server.started and all(w.started for w in workers)):
            for task in (*stages, serving):
                if task.done():
                    task.result()  # a start-up error, raised here
                    raise RuntimeError(f"{task.get_name()} exited during start-up")
            await asyncio.sleep(STARTED_POLL_S)
        url = f"http://{settings.service.host}:{server.port}"
        for w in workers:
            if w.stage.weights == RANDOM:
                console.print(f"[bold red]{w.name} has RANDOM weights: its outputs are meaningless[/]")
        console.print(
            f"[bold]visionpipe is serving on {url}/[/]  (drop an image on the page; API docs {url}/docs)",
            soft_wrap=True,
        )
        console.print(f"  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' {url}/v1/detect", soft_wrap=True)
        console.print("Ctrl-C stops it.")
        await serving
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        for w in workers:
            w.stop()
        await asyncio.gather(*stages, return_exceptions=True)
        await broker.close()
