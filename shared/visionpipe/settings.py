"""All configuration, in one pydantic-settings model.

Sources, highest priority first: CLI flags (passed as keyword arguments),
environment variables ``VISIONPIPE_<SECTION>__<FIELD>`` (for example
``VISIONPIPE_BROKER__URL``), a settings file named by ``VISIONPIPE_SETTINGS_FILE``
(TOML, YAML or JSON), then the defaults below. Secrets are ``SecretStr`` so
that they never appear in logs, reprs or health endpoints.

Deployment files (compose, Kubernetes) are checked against this model by the
test suite, so a setting renamed here fails the build until they follow.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "VISIONPIPE_"
SETTINGS_FILE_ENV = "VISIONPIPE_SETTINGS_FILE"


class BrokerSettings(BaseModel):
    url: str = Field("memory://", description="memory://, redis://, rediss:// or kafka://host:port[,host:port]")
    username: str | None = Field(None, description="Redis ACL user or Kafka SASL user; overrides the URL's")
    password: SecretStr | None = Field(None, description="Redis password or Kafka SASL password; overrides the URL's")
    password_file: Path | None = Field(None, description="file holding the password (Kubernetes/compose secrets)")
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_verify: bool = True
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    # Kafka: 64 MiB leaves room for a batch of 640x640 uint8 tensors (1.2 MB each) plus headroom.
    kafka_max_message_bytes: int = 64 * 1024 * 1024
    kafka_partitions: int = Field(4, description="partitions per topic made by ensure(); caps parallel consumers")
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_ms: int = 1_000
    # A consumer that has held a delivery this long without acking is presumed dead.
    reclaim_idle_s: float = 30.0
    connect_retries: int = 20
    connect_backoff_s: float = 0.2
    connect_backoff_max_s: float = 5.0


class StreamSettings(BaseModel):
    prefix: str = Field("vp", description="namespace for every stream/topic name")
    frames: str = "frames"
    tensors: str = "tensors"
    crops: str = "crops"
    results: str = "results"
    dead_letter: str = "dead"

    def name(self, stream: str) -> str:
        return f"{self.prefix}.{getattr(self, stream)}" if self.prefix else getattr(self, stream)


class LimitSettings(BaseModel):
    max_image_bytes: int = 25 * 1024 * 1024
    # 50 MP: a 16-bit decompression bomb stops here, a large phone photo (48 MP) still passes.
    max_image_pixels: int = 50_000_000
    max_message_bytes: int = 64 * 1024 * 1024
    # Ingress stops admitting above this backlog (pending + undelivered, summed over every stage's input).
    ingress_high_watermark: int = 2_000
    max_retries: int = Field(3, description="transient failures of one message before it is dead-lettered")


class ExecutorSettings(BaseModel):
    policy: Literal["adaptive", "slack", "fixed", "timeout", "aimd"] = "adaptive"
    slo_ms: float = Field(200.0, description="per-stage latency bound; every request's deadline is arrival + slo")
    max_batch: int = 32
    fixed_batch: int = 8
    max_queue_delay_ms: float = Field(2.0, description="timeout policy: Triton's max_queue_delay")
    overlap: bool = Field(True, description="two CUDA streams and pinned buffers: upload of n+1 during compute of n")
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    channels_last: bool = True
    cuda_graphs: bool = False
    history: int = Field(64, description="batches in the latency model's least-squares window")
    fixed_timeout_ms: float | None = Field(None, description="fixed policy: send a partial batch after this wait")
    warmup_small: int = Field(1, description="warm-up times this batch size and max_batch to seed the model")
    warmup_repeats: int = Field(3, description="timed runs per warm-up batch size (after one untimed run)")


class DecodeSettings(BaseModel):
    backend: Literal["auto", "dali", "nvjpeg", "cpu"] = Field(
        "auto", description="auto: DALI where DALI and a GPU are present, else nvJPEG on a GPU, else the CPU"
    )
    input_size: int = Field(640, ge=32, le=4096, description="letterboxed square side fed to the detector")
    batch: int = Field(16, ge=1, description="frames taken from the broker per decode batch")
    workers: int = Field(0, ge=0, description="CPU decode threads; 0 means every core")
    # 114 is the grey YOLO-family letterboxes use; any mid-grey keeps padding away from both ends of the range.
    pad_value: int = Field(114, ge=0, le=255, description="grey level of the letterbox padding")


class DetectorSettings(BaseModel):
    model: str = Field("ssdlite320_mobilenet_v3_large", description="a torchvision detection model name")
    weights: str = Field(
        "DEFAULT", description="random, a file (state dict or TorchScript), DEFAULT or a torchvision weights name"
    )
    score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    # Caps the boxes per image: each one is a crop for the classifier, and random weights produce hundreds.
    max_detections: int = Field(20, ge=1)
    crop_size: int = Field(224, ge=16, description="side of the square crops cut for the classifier")
    batch: int = Field(8, ge=1, description="messages taken from the broker per consume")


class ClassifierSettings(BaseModel):
    model: str = Field("mobilenet_v3_small", description="a torchvision classification model name")
    weights: str = Field(
        "DEFAULT", description="random, a file (state dict or TorchScript), DEFAULT or a torchvision weights name"
    )
    top_k: int = Field(5, ge=1)
    batch: int = Field(8, ge=1, description="messages taken from the broker per consume")


class ServiceSettings(BaseModel):
    host: str = Field("127.0.0.1", description="address for /healthz, /readyz and /metrics; 0.0.0.0 in containers")
    port: int = Field(8000, ge=0, le=65535, description="port of /healthz, /readyz and /metrics; 0 picks a free one")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    consumer: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    group: str = Field("", description="consumer group; empty means the stage's name")
    log_level: str = "INFO"
    log_json: bool = False
    drain_grace_s: float = Field(25.0, description="time to finish in-flight batches on SIGTERM")
    # --drain: the input (and upstream) backlog must stay at zero this long before the stage exits.
    drain_idle_s: float = Field(1.5, ge=0.0, description="idle time at zero backlog before --drain exits")
    consume_timeout_s: float = Field(0.1, gt=0.0, description="longest a consume call blocks waiting for a message")
    # Two consumed batches in flight keep the executor fed while the previous batch is published and acked.
    max_inflight_batches: int = Field(2, ge=1)
    reclaim_interval_s: float = Field(5.0, gt=0.0, description="how often a stage reclaims dead consumers' deliveries")


class GatewaySettings(BaseModel):
    """The HTTP gateway (``visionpipe serve gateway``); it listens on ``service.host``/``service.port`` like every
    service, with its API, page, docs, probes and metrics on that one port."""

    wait_s: float = Field(10.0, gt=0.0, description="how long POST /v1/detect waits for its result by default")
    # A client may ask for longer with ?timeout_ms=, up to this: a wait holds a connection and a slot in memory.
    max_wait_s: float = Field(60.0, gt=0.0, description="longest wait a client may ask for with ?timeout_ms=")
    result_ttl_s: float = Field(600.0, gt=0.0, description="how long a result stays fetchable by GET /v1/results/{id}")
    # Memory store only (memory and Kafka brokers): the newest this many results are kept within their TTL.
    max_results: int = Field(10_000, ge=1, description="results kept in memory when the store is not Redis")
    results_url: str = Field(
        "", description="results store: redis://… or memory://; empty: the broker when it is Redis, else memory"
    )
    group: str = Field("gateway", description="consumer group on the results stream (per replica with memory)")
    feed: str = Field(
        "results-json", description="stream/topic (under streams.prefix) of every result as JSON; empty: none"
    )
    # A slow client must not hold a request slot for ever: idle gap between body chunks, and the whole body.
    body_chunk_timeout_s: float = Field(5.0, gt=0.0, description="longest gap between two chunks of a request body")
    body_timeout_s: float = Field(30.0, gt=0.0, description="longest time to receive a whole request body")
    header_timeout_s: float = Field(10.0, gt=0.0, description="longest time to receive a request's head")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line plus headers, in bytes")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 429 or 503: when a retry may find room")
    tokens_file: Path | None = Field(None, description="file of bearer tokens, one per line; unset: no auth")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty: CORS off")


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
