"""Weights from a file (state dict, TorchScript), by name with an offline fallback, random."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from tests.services.helpers import CLASSIFIER, CROP
from visionpipe.services.weights import RANDOM, load_model, save_random_weights


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


def test_named_weights_fall_back_to_random_when_offline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    loaded = load_model("classification", CLASSIFIER, "DEFAULT")
    assert loaded.weights == RANDOM
    assert "FALLING BACK TO RANDOM" in caplog.text
    assert loaded.label_name(1) == "goldfish"
