"""Loading a model with the weights a setting names; weights that cannot be had stop the stage.

``name`` is a bundled model (``nanodet_g``, ``efficientnet_lite0``: see
``visionpipe.services.models``) or a torchvision model name. ``weights`` is one of:

* ``DEFAULT`` — a bundled model's pinned file from ``models.cache_dir``, checked
  against its sha256; a torchvision model's default weights from torch's cache,
  else downloaded by torchvision;
* a torchvision weights name (``COCO_V1``, ``MobileNet_V3_Small_Weights.IMAGENET1K_V1``);
* a path to a local file — a state dict (``torch.save(model.state_dict())``, loaded
  with ``weights_only=True``: no pickled code runs), a safetensors file, or a
  TorchScript archive;
* ``random`` — freshly initialised, for tests and benchmarks; every output says so.

Weights that were asked for and cannot be had (offline, not fetched, altered on
disk) raise :class:`WeightsUnavailable` saying why and what to do. Nothing falls
back to random: the only random model is one asked for by ``random``.

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

from visionpipe.services.models.registry import BundledModel, WeightsUnavailable, bundled, verified_path
from visionpipe.settings import ModelsSettings

log = logging.getLogger(__name__)

RANDOM = "random"
DEFAULT = "DEFAULT"
Kind = Literal["detection", "classification"]

__all__ = ["RANDOM", "Kind", "LoadedModel", "WeightsUnavailable", "load_model", "save_random_weights"]


@dataclass
class LoadedModel:
    module: torch.nn.Module
    weights: str  # what the outputs report: the weights name, the file, or "random"
    categories: list[str] | None
    scripted: bool = False
    arch: str = ""  # the model's name: a bundled model's or torchvision's
    channels_last_on_cpu: bool = False

    @property
    def is_random(self) -> bool:
        return self.weights == RANDOM

    def label_name(self, label: int) -> str:
        if self.categories is not None and 0 <= label < len(self.categories):
            return self.categories[label]
        return f"class_{label}"


def load_model(kind: Kind, name: str, weights: str, cache_dir: Path | None = None) -> LoadedModel:
    """The model ``name`` in eval mode on the CPU, with ``weights`` as described in the module docstring."""
    bundle = bundled(name)
    if bundle is not None:
        if bundle.kind != kind:
            raise ValueError(f"{name} is a bundled {bundle.kind} model, not a {kind} one")
        loaded = _from_bundle(bundle, weights, cache_dir or ModelsSettings().cache_dir)
    else:
        known = torchvision.models.list_models(module=_module(kind))
        if name not in known:
            raise ValueError(f"unknown {kind} model {name!r}; bundled: {_bundled_names(kind)}; torchvision: {known}")
        if weights == RANDOM:
            loaded = LoadedModel(_build(kind, name), RANDOM, _default_categories(name))
        elif Path(weights).is_file():
            loaded = _from_file(kind, name, Path(weights))
        else:
            loaded = _from_torchvision(kind, name, weights)
    loaded.arch = name
    if loaded.is_random:
        log.warning("%s model %s has RANDOM weights (asked for): its outputs are meaningless", kind, name)
    loaded.module.eval()
    return loaded


def _bundled_names(kind: Kind) -> list[str]:
    from visionpipe.services.models.registry import BUNDLED

    return [m.name for m in BUNDLED.values() if m.kind == kind]


def _module(kind: Kind) -> Any:
    return torchvision.models.detection if kind == "detection" else torchvision.models


def _build(kind: Kind, name: str, weights: Any = None) -> torch.nn.Module:
    bundle = bundled(name)
    if bundle is not None:
        module: torch.nn.Module = bundle.function("build")()
        return module
    extra: dict[str, Any] = {"weights_backbone": None} if kind == "detection" and weights is None else {}
    model: torch.nn.Module = torchvision.models.get_model(name, weights=weights, **extra)
    return model


def _default_categories(name: str) -> list[str] | None:
    bundle = bundled(name)
    if bundle is not None:
        return _bundle_categories(bundle)
    try:
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    except (ValueError, KeyError, AttributeError):
        return None
    cats = meta.get("categories")
    return list(cats) if cats else None


def _bundle_categories(bundle: BundledModel) -> list[str]:
    if bundle.categories == "coco80":
        from visionpipe.services.models.nanodet import COCO80

        return list(COCO80)
    # torchvision keeps the ImageNet-1k names in its weights' metadata: no download until weights are asked for.
    return list(torchvision.models.ResNet50_Weights.DEFAULT.meta["categories"])


def _from_bundle(bundle: BundledModel, weights: str, cache_dir: Path) -> LoadedModel:
    cats = _bundle_categories(bundle)
    if weights == RANDOM:
        module = _build(bundle.kind, bundle.name)
        return LoadedModel(module, RANDOM, cats, channels_last_on_cpu=bundle.channels_last_on_cpu)
    if weights == DEFAULT:
        path = verified_path(bundle, cache_dir)
        label = f"{bundle.name} ({bundle.source.package}, sha256 {bundle.sha256[:12]})"
    elif Path(weights).is_file():
        path, label = Path(weights), weights
    else:
        raise ValueError(f"weights {weights!r} for {bundle.name}: use DEFAULT, random or a file")
    if _is_torchscript(path):
        return _from_file(bundle.kind, bundle.name, path)
    module = _build(bundle.kind, bundle.name)
    module.load_state_dict(_read_state(path), strict=True)
    return LoadedModel(module, label, cats, channels_last_on_cpu=bundle.channels_last_on_cpu)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder; state dicts saved by torch.save have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch.save file, without running pickled code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ..., "epoch": ...} checkpoint layout
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict or TorchScript archive")
    return state


def _from_file(kind: Kind, name: str, path: Path) -> LoadedModel:
    if _is_torchscript(path):
        with warnings.catch_warnings():  # deprecated in torch 2.14, still the format many exported models are in
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return LoadedModel(module, str(path), _default_categories(name), scripted=True)
    model = _build(kind, name)
    model.load_state_dict(_read_state(path), strict=True)
    return LoadedModel(model, str(path), _default_categories(name))


def _from_torchvision(kind: Kind, name: str, weights: str) -> LoadedModel:
    enum = torchvision.models.get_model_weights(name)
    short = weights.rsplit(".", 1)[-1]
    if short == DEFAULT:
        chosen = enum.DEFAULT
    elif short in enum.__members__:
        chosen = enum[short]
    else:
        raise ValueError(f"weights {weights!r}: not random, not a file, and not one of {', '.join(enum.__members__)}")
    label = f"{enum.__name__}.{chosen.name}"
    try:
        model = _build(kind, name, chosen)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError: offline, proxy refused, DNS; RuntimeError: hash
        raise WeightsUnavailable(
            f"could not get {name} weights {label} ({exc}): torchvision downloads them from download.pytorch.org "
            f"into {torch.hub.get_dir()}. Without that network, use the bundled models (the defaults: "
            f"{', '.join(b for k in ('detection', 'classification') for b in _bundled_names(k))}), "
            "a local weights file, or weights=random for a run whose outputs mean nothing"
        ) from exc
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
