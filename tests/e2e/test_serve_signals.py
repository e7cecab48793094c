"""A served stage as a process: settings from a file, probes over HTTP, clean exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import Server, free_port

VISIONPIPE = str(Path(sys.executable).parent / "visionpipe")
# Importing torch and connecting, on a busy 2-core box.
READY_TIMEOUT_S = 60.0
# SIGTERM with nothing in flight: the loop notices within one consume timeout.
EXIT_TIMEOUT_S = 15.0


def _readyz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_serve_reads_settings_file_answers_probes_and_drains_on_sigterm(
    redis_server: Server, ns: str, tmp_path: Path
) -> None:
    settings_file = tmp_path / "visionpipe.toml"
    settings_file.write_text(f'[streams]\nprefix = "{ns}"\n\n[decode]\nbackend = "cpu"\n')
    port = free_port()
    log = (tmp_path / "decode.log").open("wb")
    argv = [VISIONPIPE, "serve", "decode", "--broker", redis_server.url, "--port", str(port)]
    proc = subprocess.Popen([*argv, "--settings", str(settings_file)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            ready = _readyz(port)
            if ready and ready["ready"]:
                break
            time.sleep(0.2)
        assert ready == {
            "ready": True,
            "checks": {"model": True, "broker": True, "broker_state": True, "consuming": True},
        }, (
            tmp_path / "decode.log"
        ).read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_TIMEOUT_S) == 0
        text = (tmp_path / "decode.log").read_text()
        assert f"consuming {ns}.frames" in text  # the prefix came from the settings file
        assert "SIGTERM" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
