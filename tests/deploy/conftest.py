"""The rendered manifests, built once per session: kustomize is quick, but it runs as a subprocess per overlay."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import K8S, OVERLAYS, kustomize_build
from tests.deploy.manifests import Objects


@pytest.fixture(scope="session")
def rendered() -> dict[str, Objects]:
    """base and each overlay by name; tests that alter an object deep-copy it first, since this is shared."""
    return {
        name: kustomize_build(K8S / ("base" if name == "base" else f"overlays/{name}")) for name in ("base", *OVERLAYS)
    }
