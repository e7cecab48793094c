"""The commands: ``visionpipe serve gateway`` stops cleanly on SIGTERM, and ``visionpipe run --serve`` gives a
newcomer a working pipeline behind a URL in one command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability.harness import VISIONPIPE
from tests.servers import free_port
from tests.services.gateway.helpers import GatewayProc, http, jpeg


async def test_sigterm_answers_waiting_requests_503_and_exits_0(tmp_path: Path, ns: str) -> None:
    proc = GatewayProc({"VISIONPIPE_BROKER__URL": f"memory://{ns}"}, tmp_path).start()  # no stages: requests wait
    try:
        await asyncio.to_thread(proc.wait_ready, 60.0, False)
        waiting = asyncio.create_task(
            asyncio.to_thread(
                http, "POST", proc.url + "/v1/detect?timeout_ms=30000", jpeg(), {"Content-Type": "image/jpeg"}, 30.0
            )
        )
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        proc.kill(signal.SIGTERM)
        status, headers, body = await waiting
        assert status == 503 and json.loads(body)["error"] == "stopping" and "retry-after" in headers
        assert time.monotonic() - t0 < 10
        assert proc.proc is not None and proc.proc.returncode == 0, proc.log()
        # Its log went to a file: plain text, uvicorn's coloured copy of each line (color_message) left out.
        assert "Started server process" in proc.log()
        assert "\x1b[" not in proc.log() and "color_message" not in proc.log()
    finally:
        proc.kill()


@pytest.mark.slow
def test_run_serve_prints_a_url_that_answers(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    env = {**os.environ, "VISIONPIPE_DETECTOR__MAX_DETECTIONS": "2", "VISIONPIPE_DECODE__INPUT_SIZE": "320"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [VISIONPIPE, "run", "--serve", "--port", str(port), "--device", "cpu", "--weights", "random"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "serving on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        url = re.search(r"serving on (http://\S+?)/", log.read_text())
        assert url is not None and url.group(1) == f"http://127.0.0.1:{port}", log.read_text()
        status, _, body = http("POST", url.group(1) + "/v1/detect", jpeg(), {"Content-Type": "image/jpeg"}, 60)
        doc = json.loads(body)
        assert status == 200 and doc["image"] == {"width": 640, "height": 480, "orientation": 1} and doc["objects"], (
            body[:300]
        )
        assert doc["weights"] == {"detector": "random", "classifier": "random"}
        assert "curl --data-binary" in log.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
