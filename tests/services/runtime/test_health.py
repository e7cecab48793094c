"""/healthz, /readyz and /metrics of a running decode stage, over real HTTP on a free port."""

from __future__ import annotations

import asyncio
import json

from tests.services.helpers import fast_settings, good_images
from visionpipe.broker import MemoryBroker
from visionpipe.health import HealthServer
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.factory import make_worker
from visionpipe.topology import DECODE


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_probes_and_metrics_follow_the_stage(ns: str) -> None:
    settings = fast_settings(ns, f"memory://{ns}")
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    metrics = Metrics()
    worker = make_worker(DECODE, broker, settings, metrics)
    server = HealthServer(metrics, worker.ready_checks, "127.0.0.1", 0)
    port = await server.start()
    try:
        assert await _get(port, "/healthz") == (200, b"ok\n")
        status, body = await _get(port, "/readyz")
        assert status == 503 and json.loads(body)["checks"]["model"] is False  # not started yet

        task = asyncio.create_task(worker.run())
        await submit_images(broker, settings, [Frame(img) for img in good_images()] + [Frame(b"")])
        while (await broker.backlog(settings.streams.name("frames"), DECODE)).total:
            await asyncio.sleep(0.02)
        status, body = await _get(port, "/readyz")
        assert status == 200 and json.loads(body) == {
            "ready": True,
            "checks": {"model": True, "broker": True, "broker_state": True, "consuming": True},
        }
        status, text = await _get(port, "/metrics")
        assert status == 200
        assert b'visionpipe_messages_total{outcome="ok",stage="decode"} 3.0' in text
        assert b'visionpipe_messages_total{outcome="dead_letter",stage="decode"} 1.0' in text
        assert b'visionpipe_stage_latency_seconds_count{phase="compute",stage="decode"} 3.0' in text
        assert b"visionpipe_backlog" in text
        assert (await _get(port, "/nope"))[0] == 404
        assert (await _get(port, "/healthz", "POST"))[0] == 405

        worker.stop()
        await asyncio.wait_for(task, 10)
        assert (await _get(port, "/readyz"))[0] == 503  # draining: take it out of the load balancer
    finally:
        await server.stop()
