"""A served stage as a process: settings from a file, probes over HTTP, clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import Server, free_port
from visionpipe.services.commands.serve import EXIT_NO_BROKER, EXIT_NO_WEIGHTS

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
        }, (tmp_path / "decode.log").read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_TIMEOUT_S) == 0
        text = (tmp_path / "decode.log").read_text()
        assert f"consuming {ns}.frames" in text  # the prefix came from the settings file
        assert "SIGTERM" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_without_its_weights_never_gets_ready_and_says_what_to_run(tmp_path: Path) -> None:
    """No silent random: the detector with its bundled weights missing exits (EX_CONFIG) with the fix in its log."""
    port = free_port()
    env = {**os.environ, "VISIONPIPE_MODELS__CACHE_DIR": str(tmp_path / "empty"), "VISIONPIPE_SERVICE__DEVICE": "cpu"}
    argv = [VISIONPIPE, "serve", "detector", "--broker", "memory://no-weights", "--port", str(port)]
    with (tmp_path / "detector.log").open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            ready = _readyz(port)
            assert not (ready and ready["ready"]), "a stage without its weights reported ready"
            time.sleep(0.2)
        assert proc.wait(timeout=EXIT_TIMEOUT_S) == EXIT_NO_WEIGHTS
        log = (tmp_path / "detector.log").read_text()
        assert "cannot start" in log and "visionpipe models fetch" in log and "RANDOM" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_says_in_one_line_why_it_cannot_start(tmp_path: Path) -> None:
    """A broker nobody started: exit 69 within the connect deadline, one error line naming it; a port in use: 1."""
    broker_port = free_port()
    env = {**os.environ, "VISIONPIPE_BROKER__CONNECT_TIMEOUT_S": "1"}
    argv = [VISIONPIPE, "serve", "detector", "--broker", f"redis://127.0.0.1:{broker_port}/0", "--port", "0"]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=READY_TIMEOUT_S)
    assert proc.returncode == EXIT_NO_BROKER, proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - t0 < READY_TIMEOUT_S / 2
    (error,) = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert f"detector cannot start: cannot reach the broker at redis://127.0.0.1:{broker_port}/0" in error

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = [VISIONPIPE, "serve", "decode", "--broker", "memory://x", "--port", str(port)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=READY_TIMEOUT_S)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"Error: decode's probes cannot listen on 127.0.0.1:{port}: the port is in use by another process")
    )
