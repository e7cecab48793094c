"""The RTSP camera (rtsp_server.py under Debian's Python) as a process a test starts, kills and starts again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from tests.services.ingest.media import RTSP_SERVER, SYSTEM_PYTHON, gst_rtsp_missing

READY_TIMEOUT_S = 20.0


@dataclass
class RtspCamera:
    epoch: float = field(default_factory=time.time)
    port: int = 0
    fps: int = 30
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> RtspCamera:
        argv = [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--epoch", repr(self.epoch)]
        argv += ["--fps", str(self.fps)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                self.port = int(line.split("port=")[1])
                return self
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"RTSP camera did not start: {self.proc.stdout.read() if self.proc.stdout else ''}")

    def kill(self) -> None:
        """The cut: the process dies, its TCP connections close."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def require_gst_rtsp() -> None:
    missing = gst_rtsp_missing()
    if missing:
        pytest.fail(f"GStreamer's RTSP server is not installed ({missing}); `make sysdeps` installs it")
