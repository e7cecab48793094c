"""A gateway to test against: the real uvicorn server on a loopback port, with pass-through stages behind it.

``serving`` runs the server and the stand-in stages (``tests/loadgen/passthrough.py``: real broker, no model)
as tasks of the test's event loop, for tests that need a working pipeline in milliseconds; ``GatewayProc``
runs ``visionpipe serve gateway`` as a subprocess, for tests that kill it or measure its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tests.loadgen.passthrough import run_stage
from tests.reliability.harness import VISIONPIPE
from tests.servers import free_port
from visionpipe.services.gateway.server import GatewayServer, make_server
from visionpipe.services.gateway.service import Gateway
from visionpipe.settings import Settings, load_settings
from visionpipe.topology import STAGES

START_TIMEOUT_S = 30.0


def gateway_settings(ns: str, url: str | None = None, **sections: dict[str, Any]) -> Settings:
    """A gateway on its own stream prefix (and memory store), a free port, quick waits."""
    overrides: dict[str, Any] = {
        "broker": {"url": url or f"memory://{ns}"},
        "streams": {"prefix": ns},
        "service": {"port": 0, "host": "127.0.0.1"},
        "gateway": {"wait_s": 5.0, "max_wait_s": 10.0, "grpc_port": 0},  # gRPC on a free port, never 8081
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(**overrides)


@dataclass
class Live:
    server: GatewayServer
    gateway: Gateway
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, *, stages: bool = True, stall: Callable[[str], float] | None = None
) -> AsyncIterator[Live]:
    """The gateway on a loopback port (and the pass-through stages), until the block ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_stage(s, settings, stop, stall=stall)) for s in STAGES] if stages else []
    gateway = Gateway(settings)
    server = make_server(gateway)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # the test runner owns signals
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (server.started and gateway.ready and (gateway.stages_ready or not stages)):
            if task.done() or time.monotonic() > deadline:
                task.result()
                raise AssertionError("gateway did not start")
            await asyncio.sleep(0.02)
        yield Live(server, gateway, settings)
    finally:
        server.should_exit = True
        await task
        stop.set()
        await asyncio.gather(*tasks)


def jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A small real JPEG, different for each seed (so each is a different request)."""
    img = Image.new("RGB", (width, height), (seed * 37 % 256, 90, 140))
    ImageDraw.Draw(img).rectangle((10 + seed % 50, 10, width // 2, height // 2), fill=(230, 200, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """A blocking request with urllib (another real client): (status, lower-cased headers, body); 0 when refused."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    except OSError:
        return 0, {}, b""


@dataclass
class GatewayProc:
    """``visionpipe serve gateway`` in a subprocess, with its log."""

    env: dict[str, str]
    logdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.logdir / f"gateway-{self.port}.log"

    def start(self) -> GatewayProc:
        env = {
            **os.environ,
            **self.env,
            "VISIONPIPE_SERVICE__PORT": str(self.port),
            "VISIONPIPE_SERVICE__CONSUMER": f"gw{self.port}",
            "VISIONPIPE_GATEWAY__GRPC_PORT": self.env.get("VISIONPIPE_GATEWAY__GRPC_PORT", "0"),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [VISIONPIPE, "serve", "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout_s: float = 60.0, stages: bool = True) -> None:
        """Until ``/readyz`` says ready; ``stages=False``: until the gateway itself serves (no stage is running yet)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"gateway exited:\n{self.log()}"
            status, _, body = http("GET", self.url + "/readyz", timeout=2)
            doc = json.loads(body) if status in (200, 503) and body else {}
            if doc.get("ready") or (not stages and doc.get("checks", {}).get("serving")):
                return
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready after {timeout_s}s:\n{self.log()}")

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else "(no log)"
