"""Redis with passwords, least-privilege ACL users and TLS (mutual), against real redis-servers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.servers import Server, free_port, start_redis
from visionpipe.broker import connect
from visionpipe.broker.redis_acl import acl_args, acl_rule
from visionpipe.broker.security import BrokerAuthError
from visionpipe.settings import Settings, load_settings

ADMIN_PASSWORD = "admin-s3cret"
STAGE_PASSWORD = "stage-pa55:w/rd"  # URL-unsafe characters on purpose


def quick(**broker: object) -> Settings:
    # Many retries: a test that retried auth failures would take seconds, and fail its time bound.
    return load_settings(broker={"connect_retries": 20, "connect_backoff_s": 0.2, **broker})


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("redis-acl")
    aclfile = workdir / "users.acl"
    aclfile.write_text(
        f"user default off\nuser admin on >{ADMIN_PASSWORD} ~* &* +@all\n{acl_rule('decode', STAGE_PASSWORD, 'vp')}\n"
    )
    server = start_redis(workdir, "--aclfile", str(aclfile))
    yield server
    server.stop()


async def test_acl_user_does_its_job(acl_server: Server, ns: str) -> None:
    settings = quick(username="decode", password=STAGE_PASSWORD)
    async with await connect(acl_server.url, settings) as broker:
        stream = f"vp.{ns}"
        await broker.ensure(stream, "decode")
        await broker.publish(stream, [b"a", b"b"], ["1", "2"])
        got = await broker.consume(stream, "decode", "c", 10, 1.0)
        await broker.ack(stream, "decode", got)
        assert await broker.reclaim(stream, "decode", "c2", 0.0, 10) == []
        assert (await broker.backlog(stream, "decode")).total == 0
        assert await broker.length(stream) == 0, "the ack script may trim under the stage's ACL"


def test_acl_user_cannot_do_more(acl_server: Server) -> None:
    client = redis.Redis(port=acl_server.port, username="decode", password=STAGE_PASSWORD)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xadd("other-tenant.frames", {"d": b"x"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.config_get("*")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.delete("vp.frames")
    finally:
        client.close()


def test_acl_args_match_the_file_rule(acl_server: Server) -> None:
    admin = redis.Redis(port=acl_server.port, username="admin", password=ADMIN_PASSWORD)
    try:
        admin.execute_command("ACL", "SETUSER", *acl_args("loadgen", "pw", "vp", admin=True))
        loadgen = redis.Redis(port=acl_server.port, username="loadgen", password="pw")
        loadgen.xadd("vp.x", {"d": b"1"})
        assert loadgen.delete("vp.x") == 1, "an admin user may clean up its streams"
        with pytest.raises(redis.exceptions.NoPermissionError):
            loadgen.flushall()
        loadgen.close()
        assert "pw" not in acl_rule("x", "pw", "vp"), "the ACL line holds the hash, never the password"
    finally:
        admin.close()


async def test_wrong_password_fails_at_once_without_leaking_it(acl_server: Server) -> None:
    t0 = time.monotonic()
    with pytest.raises(BrokerAuthError) as info:
        await connect(acl_server.url, quick(username="decode", password="not-it"))
    assert time.monotonic() - t0 < 2.0, "credentials are not retried"
    assert "not-it" not in str(info.value)


async def test_password_from_file_overrides_url(acl_server: Server, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(STAGE_PASSWORD + "\n")
    url = acl_server.url.replace("redis://", "redis://decode:wrong@")
    async with await connect(url, quick(password_file=secret)) as broker:
        assert await broker.ping()
        assert "wrong" not in repr(broker) and STAGE_PASSWORD not in repr(broker)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=vp-test-ca", "-days", "2", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    other = d / "other"
    other.mkdir()
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=not-our-ca", "-days", "2", cwd=other
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, Path]]:
    workdir = tmp_path_factory.mktemp("redis-tls")
    make_pki(workdir)
    tls_port = free_port()
    server = start_redis(
        workdir,
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(workdir / "server.crt"),
        "--tls-key-file",
        str(workdir / "server.key"),
        "--tls-ca-cert-file",
        str(workdir / "ca.crt"),
        "--tls-auth-clients",
        "yes",
        "--requirepass",
        ADMIN_PASSWORD,
    )
    yield server, tls_port, workdir
    server.stop()


async def test_mutual_tls_round_trip(tls_server: tuple[Server, int, Path], ns: str) -> None:
    _, port, pki = tls_server
    settings = quick(
        password=ADMIN_PASSWORD,
        tls_ca_file=pki / "ca.crt",
        tls_cert_file=pki / "client.crt",
        tls_key_file=pki / "client.key",
    )
    async with await connect(f"rediss://127.0.0.1:{port}/0", settings) as broker:
        await broker.ensure(ns, "g")
        await broker.publish(ns, [b"over tls"])
        assert [d.data for d in await broker.consume(ns, "g", "c", 1, 1.0)] == [b"over tls"]


@pytest.mark.parametrize("case", ["unknown-ca", "no-client-cert"])
async def test_tls_misconfiguration_is_an_auth_error(tls_server: tuple[Server, int, Path], case: str) -> None:
    _, port, pki = tls_server
    files = {
        "tls_ca_file": pki / "other" / "ca.crt",
        "tls_cert_file": pki / "client.crt",
        "tls_key_file": pki / "client.key",
    }
    if case == "no-client-cert":
        files = {"tls_ca_file": pki / "ca.crt"}
    t0 = time.monotonic()
    with pytest.raises((BrokerAuthError, Exception)) as info:
        await connect(f"rediss://127.0.0.1:{port}/0", quick(password=ADMIN_PASSWORD, **files))
    assert isinstance(info.value, BrokerAuthError), repr(info.value)
    assert time.monotonic() - t0 < 3.0, "a TLS failure is not retried"
