"""A loopback npm + PyPI registry, and the clients' settings pointed at it the way a user points them at a mirror."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.models.registries import Registry


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    reg = Registry()
    yield reg
    reg.close()


@pytest.fixture
def mirror(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """npm and pip set to use ``registry`` only through their own settings, with this machine's settings left out.

    Fresh caches, so every fetch asks the registry; no retries, so a registry that is not there fails at once.
    """
    for key in list(os.environ):
        if key.upper().startswith(("PIP_", "NPM_CONFIG_")):
            monkeypatch.delenv(key)
    for npmrc in ("user-npmrc", "global-npmrc"):
        (tmp_path / npmrc).touch()
    settings = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"{registry.url}/simple/",
        "PIP_CACHE_DIR": str(tmp_path / "pip-cache"),
        "PIP_RETRIES": "0",
        "npm_config_registry": f"{registry.url}/",
        "npm_config_userconfig": str(tmp_path / "user-npmrc"),
        "npm_config_globalconfig": str(tmp_path / "global-npmrc"),
        "npm_config_cache": str(tmp_path / "npm-cache"),
        "npm_config_fetch_retries": "0",
        "npm_config_update_notifier": "false",
        "no_proxy": "127.0.0.1",
        "NO_PROXY": "127.0.0.1",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return registry
