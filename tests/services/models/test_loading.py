"""Weights from a file (state dict, safetensors, TorchScript), by name, bundled, random; no fallback to random."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from tests.services.helpers import CLASSIFIER, CROP
from visionpipe.services.models.loading import RANDOM, WeightsUnavailable, load_model, save_random_weights


def test_state_dict_file_loads_exactly(weight_files: tuple[Path, Path]) -> None:
    _, cls_file = weight_files
    loaded = load_model("classification", CLASSIFIER, str(cls_file))
    saved = torch.load(cls_file, weights_only=True)
    assert loaded.weights == str(cls_file) and not loaded.is_random
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert loaded.categories is not None and loaded.label_name(0) == "tench"  # names from torchvision's metadata


def test_torchscript_file_loads(tmp_path: Path) -> None:
    path = save_random_weights("classification", CLASSIFIER, tmp_path / "cls.ts", scripted=True)
    loaded = load_model("classification", CLASSIFIER, str(path))
    assert loaded.scripted
    out = loaded.module(torch.zeros(1, 3, CROP, CROP))
    assert out.shape == (1, 1000)


def test_wrong_architecture_file_is_refused(weight_files: tuple[Path, Path]) -> None:
    det_file, _ = weight_files
    with pytest.raises(RuntimeError, match="state_dict"):
        load_model("classification", CLASSIFIER, str(det_file))


def test_unknown_model_and_weights_names() -> None:
    with pytest.raises(ValueError, match="unknown classification model"):
        load_model("classification", "no_such_net", RANDOM)
    with pytest.raises(ValueError, match="not one of"):
        load_model("classification", CLASSIFIER, "NO_SUCH_WEIGHTS")


def test_named_weights_that_cannot_be_downloaded_fail_and_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """No silent random: an offline torchvision download is an error naming the ways out."""

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match="no network in this test") as err:
        load_model("classification", CLASSIFIER, "DEFAULT")
    assert "nanodet_g" in str(err.value) and "random" in str(err.value)


def test_bundled_weights_not_fetched_fail_and_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="visionpipe models fetch"):
        load_model("detection", "nanodet_g", "DEFAULT", cache_dir=tmp_path)


def test_bundled_model_random_and_from_a_file(tmp_path: Path) -> None:
    """weights=random is the only random; a saved state dict (torch or safetensors) loads exactly, strictly."""
    from safetensors.torch import save_file

    loaded = load_model("classification", "efficientnet_lite0", RANDOM, cache_dir=tmp_path)
    assert loaded.is_random and loaded.label_name(1) == "goldfish" and loaded.channels_last_on_cpu
    state = {k: v.contiguous() for k, v in loaded.module.state_dict().items()}
    save_file(state, str(tmp_path / "lite0.safetensors"))
    again = load_model("classification", "efficientnet_lite0", str(tmp_path / "lite0.safetensors"), cache_dir=tmp_path)
    assert not again.is_random
    assert all(torch.equal(v, state[k]) for k, v in again.module.state_dict().items())
    with pytest.raises(ValueError, match="bundled detection model"):
        load_model("classification", "nanodet_g", RANDOM)
    with pytest.raises(ValueError, match="DEFAULT, random or a file"):
        load_model("detection", "nanodet_g", "COCO_V1")
