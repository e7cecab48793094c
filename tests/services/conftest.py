"""Random weights saved once per session, loaded by every stage test through the real file path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services.helpers import save_weights


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def bundled_models() -> Path:
    """The bundled models fetched by the real path (registries over HTTPS) into the models cache, once.

    The cache is the one ``make install`` fills (``models.cache_dir``), so a machine that has them — or CI's
    cache — fetches nothing; a clean machine downloads them here.
    """
    from visionpipe.services.models.fetch import fetch
    from visionpipe.services.models.registry import BUNDLED
    from visionpipe.settings import load_settings

    cache = load_settings().models.cache_dir
    for model in BUNDLED.values():
        fetch(model, cache)
    return cache
