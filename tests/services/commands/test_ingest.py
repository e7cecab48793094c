"""``visionpipe ingest`` at start-up: a port in use or a broker nobody started is one line, before any model loads;
its default port is not the gateway's, and the client commands look for it there."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from tests.servers import free_port
from tests.services.commands.fresh import in_a_fresh_process
from visionpipe.services.commands.ingest import DEFAULT_API, ingest
from visionpipe.services.commands.preflight import DEFAULT_PORTS, GATEWAY, INGEST


def test_a_port_in_use_is_one_line_before_any_model_loads() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, err, torch_loaded = in_a_fresh_process("ingest", "lavfi:testsrc", "--port", str(port))
    assert code == 1 and not torch_loaded and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"Error: ingest's API cannot listen on 127.0.0.1:{port}: the port is in use")
    assert "--port N (0: any free port)" in line and "ingest 8010" in line


def test_a_broker_nobody_started_is_one_line() -> None:
    port = free_port()
    code, err, _ = in_a_fresh_process(
        "ingest",
        "lavfi:testsrc",
        "--broker",
        f"redis://127.0.0.1:{port}/0",
        "--port",
        "0",
        env={"VISIONPIPE_BROKER__CONNECT_TIMEOUT_S": "1"},
    )
    assert code == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("Error:")]
    assert line.startswith(f"Error: cannot reach the broker at redis://127.0.0.1:{port}/0 (no answer in 1 s")


def test_ingest_has_its_own_default_port_and_its_clients_look_there() -> None:
    assert DEFAULT_PORTS[INGEST] != DEFAULT_PORTS[GATEWAY]
    assert len(set(DEFAULT_PORTS.values())) == len(DEFAULT_PORTS)  # gateway, three stages, ingest: side by side
    assert f"http://127.0.0.1:{DEFAULT_PORTS[INGEST]}" == DEFAULT_API
    assert "default 8010" in CliRunner().invoke(ingest, ["run", "--help"]).output
