"""The gateway (HTTP and gRPC) with the three real stages behind it, on an event loop of its own thread.

Decode, detector and classifier are the services' own workers (``LocalStages``: the bundled models with random
weights, on the CPU), on a memory broker they share with the gateway, as ``visionpipe run --serve`` runs them.
On a thread of its own so the clients under test, Triton's blocking ones among them, call it as a user would:
from outside its loop. Started once per module, since the stages' start-up (model build, warm-up) is the slow part.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from tests.services.helpers import fast_overrides
from visionpipe.broker import connect
from visionpipe.ingress import ensure_pipeline_streams
from visionpipe.services.gateway.server import GatewayServer, make_server
from visionpipe.services.gateway.service import Gateway
from visionpipe.services.runtime.local import LocalStages
from visionpipe.settings import Settings, load_settings

START_TIMEOUT_S = 90.0


def real_settings(ns: str, **gateway: Any) -> Settings:
    overrides = fast_overrides(ns, f"memory://{ns}")
    overrides["service"] = {**overrides["service"], "host": "127.0.0.1"}
    overrides["gateway"] = {"wait_s": 30.0, "max_wait_s": 60.0, "grpc_port": 0, **gateway}
    return load_settings(**overrides)


class RealPipeline:
    """``with RealPipeline(settings) as p:`` — p.http_url, p.grpc_target, p.gateway while the block runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: GatewayServer | None = None
        self.gateway: Gateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="oip-pipeline", daemon=True)

    @property
    def http_url(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    @property
    def grpc_target(self) -> str:
        assert self.server is not None and self.server.grpc_port is not None
        return f"127.0.0.1:{self.server.grpc_port}"

    def __enter__(self) -> RealPipeline:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            self.__exit__(None, None, None)
            raise AssertionError(f"the pipeline did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # said by __enter__, which waits for the start
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        broker = await connect(settings=self.settings)
        await ensure_pipeline_streams(broker, self.settings)
        try:
            async with LocalStages(broker, self.settings) as stages:
                self.gateway = Gateway(self.settings, broker=broker)
                self.server = make_server(self.gateway)
                self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
                serving = asyncio.create_task(self.server.serve())
                try:
                    await self._until_ready(stages, serving)
                    self._ready.set()
                    await self._stop.wait()
                finally:
                    self.server.should_exit = True
                    await serving
        finally:
            await broker.close()

    async def _until_ready(self, stages: LocalStages, serving: asyncio.Task[None]) -> None:
        await stages.wait_started(others=[serving])
        assert self.server is not None and self.gateway is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.server.started and self.server.grpc_port and self.gateway.ready and self.gateway.stages_ready):
            stages.check(others=[serving])
            if time.monotonic() > deadline:
                raise AssertionError("gateway not ready")
            await asyncio.sleep(0.05)
