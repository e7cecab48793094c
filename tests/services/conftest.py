"""Random weights saved once per session, loaded by every stage test through the real file path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services.helpers import save_weights


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_weights(tmp_path_factory.mktemp("weights"))
