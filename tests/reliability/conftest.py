"""One durable redis-server and one running pipeline (three ``visionpipe serve`` processes) per session.

Starting a stage costs a torch import, a model build and a warm-up: seconds of
both shared cores. So the tests that only need "a pipeline that is up" share
one; tests that must own their processes (shutdown, overload) start their
own. Every request id and stream prefix is unique, so shared tests never see
each other's messages, and every process is killed in a finalizer.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.broker.test_redis_security import make_pki
from tests.reliability.harness import Processes, StageProc, reliability_overrides, settings_of, stage_env
from tests.reliability.poison import MAX_IMAGE_BYTES, MAX_MESSAGE_BYTES
from tests.servers import Server, free_port, redis_binary, start_redis
from visionpipe.broker.redis_acl import CONNECTION_COMMANDS, STREAM_COMMANDS
from visionpipe.settings import Settings, load_settings

# Deliveries are taken back after 1 s idle and given up after 2: the retry bound shows in seconds.
SECURED_RECLAIM_IDLE_S = 1.0
SECURED_MAX_RETRIES = 2


@dataclass
class Pipeline:
    server: Server
    overrides: dict[str, Any]
    settings: Settings
    procs: Processes
    stages: list[StageProc]

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def durable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A redis-server as compose runs it: an append-only file fsynced every second. A killed redis-server has
    written (not yet fsynced) every acknowledged write, so a restart keeps them all; only a host crash could not."""
    if redis_binary() is None:
        pytest.fail("redis-server is not installed; run `make sysdeps`")
    server = start_redis(tmp_path_factory.mktemp("redis-durable"), persistence=True, appendfsync="everysec")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pipeline(durable_redis: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    ns = f"rel{uuid.uuid4().hex[:8]}"
    overrides = reliability_overrides(
        ns,
        durable_redis.url,
        limits={"max_image_bytes": MAX_IMAGE_BYTES, "max_message_bytes": MAX_MESSAGE_BYTES},
    )
    procs = Processes(stage_env(overrides), Path(tmp_path_factory.mktemp("pipeline-logs")))
    try:
        stages = procs.pipeline()
        yield Pipeline(durable_redis, overrides, settings_of(overrides), procs, stages)
    finally:
        procs.close()


@pytest.fixture
def tag() -> str:
    """A unique prefix for the request ids of one test."""
    return f"r{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------------------
# A decode stage that reaches Redis only over mutual TLS, as a least-privilege ACL user whose password is in a
# file, with its probes bound to 127.0.0.2: used by the retry-bound/DLQ test and the security tests.

ADMIN_PASSWORD = "admin-Secr3t-for-tests"
STAGE_PASSWORD = "stage-Secr3t:w/unsafe@chars"
PROBE_HOST = "127.0.0.2"


@dataclass
class SecuredStage:
    server: Server
    tls_url: str
    pki: Path
    ns: str
    admin_env: dict[str, str]  # VISIONPIPE_* variables for an operator's `visionpipe dlq` over TLS
    stage: StageProc
    settings: Settings  # the stage's settings, with the operator's credentials (to inspect streams)


def stage_acl_line(user: str, password: str, keys: list[str]) -> str:
    """A users.acl line: ``user`` may run the stage's stream commands on exactly ``keys``."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    commands = " ".join(f"+{c}" for c in (*STREAM_COMMANDS, *CONNECTION_COMMANDS))
    return f"user {user} on #{digest} resetchannels {' '.join(f'~{k}' for k in keys)} -@all {commands}"


@pytest.fixture(scope="session")
def secured_decode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredStage]:
    """The decode stage may read frames, write dead letters and its once-keys, but not (yet) its output stream."""
    work = Path(tmp_path_factory.mktemp("redis-secured"))
    make_pki(work)
    ns = f"sec{uuid.uuid4().hex[:8]}"
    (work / "users.acl").write_text(
        "user default off\n"
        f"user admin on >{ADMIN_PASSWORD} ~* &* +@all\n"
        f"{stage_acl_line('decode', STAGE_PASSWORD, [f'{ns}.frames', f'{ns}.dead', f'{ns}.once.*'])}\n"
    )
    (work / "stage-password").write_text(STAGE_PASSWORD + "\n")
    tls_port = free_port()
    tls = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(work / "server.crt"),
        "--tls-key-file",
        str(work / "server.key"),
        "--tls-ca-cert-file",
        str(work / "ca.crt"),
        "--tls-auth-clients",
        "yes",
    ]
    server = start_redis(work, "--aclfile", str(work / "users.acl"), *tls)
    tls_url = f"rediss://127.0.0.1:{tls_port}/0"
    tls_env = {
        "VISIONPIPE_BROKER__TLS_CA_FILE": str(work / "ca.crt"),
        "VISIONPIPE_BROKER__TLS_CERT_FILE": str(work / "client.crt"),
        "VISIONPIPE_BROKER__TLS_KEY_FILE": str(work / "client.key"),
    }
    overrides = reliability_overrides(
        ns,
        tls_url,
        broker={"reclaim_idle_s": SECURED_RECLAIM_IDLE_S},
        limits={"max_retries": SECURED_MAX_RETRIES},
        service={"reclaim_interval_s": 0.5, "host": PROBE_HOST},
    )
    stage_env_ = {
        **stage_env(overrides),
        **tls_env,
        "VISIONPIPE_BROKER__USERNAME": "decode",
        "VISIONPIPE_BROKER__PASSWORD_FILE": str(work / "stage-password"),
    }
    admin_env = {
        **tls_env,
        "VISIONPIPE_BROKER__URL": tls_url,
        "VISIONPIPE_STREAMS__PREFIX": ns,
        "VISIONPIPE_BROKER__USERNAME": "admin",
        "VISIONPIPE_BROKER__PASSWORD": ADMIN_PASSWORD,
    }
    procs = Processes(stage_env_, work)
    try:
        stage = procs.start("decode")
        stage.wait_ready(host=PROBE_HOST)
        tls_files = {
            "tls_ca_file": work / "ca.crt",
            "tls_cert_file": work / "client.crt",
            "tls_key_file": work / "client.key",
        }
        admin = load_settings(
            **{
                **overrides,
                "broker": {**overrides["broker"], **tls_files, "username": "admin", "password": ADMIN_PASSWORD},
            }
        )
        yield SecuredStage(server, tls_url, work, ns, admin_env, stage, admin)
    finally:
        procs.close()
        server.stop()
