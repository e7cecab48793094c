"""Loading a torchvision model with the weights a setting names, without ever failing for want of a network.

``weights`` is one of:

* ``random`` — freshly initialised, for tests and benchmarks; every output says so;
* a path to a local file — a state dict (``torch.save(model.state_dict())``,
  loaded with ``weights_only=True``: no pickled code runs) or a TorchScript archive;
* ``DEFAULT`` or a torchvision weights name (``COCO_V1``, ``IMAGENET1K_V1``,
  ``MobileNet_V3_Small_Weights.IMAGENET1K_V1``) — from torch's cache, else
  downloaded by torchvision. When that fails (no network), the model falls
  back to random weights and says so loudly, so ``visionpipe run`` still works
  on a fresh offline machine.

Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision

log = logging.getLogger(__name__)

RANDOM = "random"
Kind = Literal["detection", "classification"]


@dataclass
class LoadedModel:
    module: torch.nn.Module
    weights: str  # what the outputs report: the weights name, the file, or "random"
    categories: list[str] | None
    scripted: bool = False

    @property
    def is_random(self) -> bool:
        return self.weights == RANDOM

    def label_name(self, label: int) -> str:
        if self.categories is not None and 0 <= label < len(self.categories):
            return self.categories[label]
        return f"class_{label}"


def load_model(kind: Kind, name: str, weights: str) -> LoadedModel:
    """The model ``name`` in eval mode on the CPU, with ``weights`` as described in the module docstring."""
    if name not in torchvision.models.list_models(module=_module(kind)):
        known = ", ".join(torchvision.models.list_models(module=_module(kind)))
        raise ValueError(f"unknown {kind} model {name!r}; torchvision has: {known}")
    if weights == RANDOM:
        loaded = LoadedModel(_build(kind, name), RANDOM, _default_categories(name))
    elif Path(weights).is_file():
        loaded = _from_file(kind, name, Path(weights))
    else:
        loaded = _from_torchvision(kind, name, weights)
    if loaded.is_random:
        log.warning("%s model %s has RANDOM weights: its outputs are meaningless", kind, name)
    loaded.module.eval()
    return loaded


def _module(kind: Kind) -> Any:
    return torchvision.models.detection if kind == "detection" else torchvision.models


def _build(kind: Kind, name: str, weights: Any = None) -> torch.nn.Module:
    extra: dict[str, Any] = {"weights_backbone": None} if kind == "detection" and weights is None else {}
    model: torch.nn.Module = torchvision.models.get_model(name, weights=weights, **extra)
    return model


def _default_categories(name: str) -> list[str] | None:
    try:
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    except (ValueError, KeyError, AttributeError):
        return None
    cats = meta.get("categories")
    return list(cats) if cats else None


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder; state dicts saved by torch.save have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def _from_file(kind: Kind, name: str, path: Path) -> LoadedModel:
    if _is_torchscript(path):
        with warnings.catch_warnings():  # deprecated in torch 2.14, still the format many exported models are in
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return LoadedModel(module, str(path), _default_categories(name), scripted=True)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ..., "epoch": ...} checkpoint layout
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict or TorchScript archive")
    model = _build(kind, name)
    model.load_state_dict(state, strict=True)
    return LoadedModel(model, str(path), _default_categories(name))


def _from_torchvision(kind: Kind, name: str, weights: str) -> LoadedModel:
    enum = torchvision.models.get_model_weights(name)
    short = weights.rsplit(".", 1)[-1]
    if short == "DEFAULT":
        chosen = enum.DEFAULT
    elif short in enum.__members__:
        chosen = enum[short]
    else:
        raise ValueError(f"weights {weights!r}: not random, not a file, and not one of {', '.join(enum.__members__)}")
    label = f"{enum.__name__}.{chosen.name}"
    try:
        model = _build(kind, name, chosen)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError: offline, proxy refused, DNS
        log.warning(
            "could not get %s weights %s (%s): FALLING BACK TO RANDOM WEIGHTS; pass --weights random to silence "
            "this, or a local file",
            name,
            label,
            exc,
        )
        return LoadedModel(_build(kind, name), RANDOM, list(chosen.meta.get("categories") or []) or None)
    return LoadedModel(model, label, list(chosen.meta.get("categories") or []) or None)


def save_random_weights(kind: Kind, name: str, path: Path, scripted: bool = False) -> Path:
    """Write random weights to ``path`` (for tests and offline demos), as a state dict or TorchScript."""
    model = _build(kind, name).eval()
    if scripted:
        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; users still ship such files
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(model).save(str(path))
    else:
        torch.save(model.state_dict(), path)
    return path
