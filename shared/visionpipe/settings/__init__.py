"""All configuration, in one pydantic-settings model; its sections live in ``transport``, ``compute`` and
``serving`` by what they configure, and are all importable from here.

Sources, highest priority first: CLI flags (passed as keyword arguments), environment variables
``VISIONPIPE_<SECTION>__<FIELD>`` (for example ``VISIONPIPE_BROKER__URL``), a settings file named by
``VISIONPIPE_SETTINGS_FILE`` (TOML, YAML or JSON), then the defaults below. Secrets are ``SecretStr`` so that
they never appear in logs, reprs or health endpoints.

Deployment files (compose, Kubernetes) are checked against this model by the
test suite, so a setting renamed here fails the build until they follow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from visionpipe.settings.compute import (
    WEIGHTS_HELP,
    ClassifierSettings,
    DecodeSettings,
    DetectorSettings,
    ExecutorSettings,
    InstanceSettings,
    ModelsSettings,
)
from visionpipe.settings.serving import (
    LAVFI_FILTERS,
    STREAM_ID_PATTERN,
    GatewaySettings,
    IngestSettings,
    ServiceSettings,
    StreamSource,
)
from visionpipe.settings.transport import IMAGE_FORMATS, BrokerSettings, LimitSettings, StreamSettings

ENV_PREFIX = "VISIONPIPE_"
SETTINGS_FILE_ENV = "VISIONPIPE_SETTINGS_FILE"

__all__ = [
    "ENV_PREFIX",
    "IMAGE_FORMATS",
    "LAVFI_FILTERS",
    "SETTINGS_FILE_ENV",
    "STREAM_ID_PATTERN",
    "WEIGHTS_HELP",
    "BrokerSettings",
    "ClassifierSettings",
    "DecodeSettings",
    "DetectorSettings",
    "ExecutorSettings",
    "GatewaySettings",
    "IngestSettings",
    "InstanceSettings",
    "LimitSettings",
    "ModelsSettings",
    "ServiceSettings",
    "Settings",
    "StreamSettings",
    "StreamSource",
    "load_settings",
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    broker: BrokerSettings = BrokerSettings()
    streams: StreamSettings = StreamSettings()
    limits: LimitSettings = LimitSettings()
    executor: ExecutorSettings = ExecutorSettings()
    decode: DecodeSettings = DecodeSettings()
    detector: DetectorSettings = DetectorSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    service: ServiceSettings = ServiceSettings()
    ingest: IngestSettings = IngestSettings()
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    gateway: GatewaySettings = GatewaySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(SETTINGS_FILE_ENV)
        if path:
            sources.append(_file_source(settings_cls, Path(path)))
        sources.append(file_secret_settings)
        return tuple(sources)

    def broker_password(self) -> str | None:
        """The broker password from the setting, else from ``password_file``."""
        if self.broker.password is not None:
            return self.broker.password.get_secret_value()
        if self.broker.password_file is not None:
            return self.broker.password_file.read_text().strip()
        return None


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if not path.is_file():
        raise FileNotFoundError(f"{SETTINGS_FILE_ENV}={path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if suffix in (".yaml", ".yml"):
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    if suffix == ".json":
        return JsonConfigSettingsSource(settings_cls, json_file=path)
    raise ValueError(f"settings file {path}: use .toml, .yaml or .json")


def load_settings(**overrides: Any) -> Settings:
    """Settings with CLI overrides given as nested dicts, e.g. ``broker={"url": ...}``.

    ``None`` values are dropped so that an unset CLI flag never hides the
    environment or the file.
    """
    return Settings(**_drop_none(overrides))


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
