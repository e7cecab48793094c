"""All configuration, in one pydantic-settings model.

Sources, highest priority first: CLI flags (passed as keyword arguments), environment variables
``VISIONPIPE_<SECTION>__<FIELD>`` (for example ``VISIONPIPE_BROKER__URL``), a settings file named by
``VISIONPIPE_SETTINGS_FILE`` (TOML, YAML or JSON), then the defaults below. Secrets are ``SecretStr`` so that
they never appear in logs, reprs or health endpoints.

Deployment files (compose, Kubernetes) are checked against this model by the
test suite, so a setting renamed here fails the build until they follow.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
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
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")  # Pillow's; EPS would run Ghostscript
# FFmpeg filters that only draw or reshape frames: none reads a file or opens a URL (movie, metadata, *file* do).
LAVFI_FILTERS = ("testsrc", "testsrc2", "smptebars", "smptehdbars", "color", "mandelbrot", "scale", "fps", "format")


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
    # Start-up only (later outages are retried without a limit): a wrong host or port is said within seconds.
    connect_timeout_s: float = Field(10.0, gt=0.0, description="how long start-up waits for the broker to answer")
    connect_retries: int = 20
    connect_backoff_s: float = 0.2
    connect_backoff_max_s: float = 5.0
    # Kafka topics made by ensure(): -1 takes the cluster's default.replication.factor (KIP-464). compose sets 1
    # (one broker); the Kubernetes kafka overlay 3, with min.insync.replicas 2, so an acknowledged write (acks=all)
    # is on two brokers and survives the loss of any one.
    kafka_replication_factor: int = Field(
        -1, ge=-1, description="replicas of each topic ensure() makes (-1: the cluster's default)"
    )
    kafka_min_insync_replicas: int | None = Field(
        None, ge=1, description="min.insync.replicas of each topic ensure() makes (unset: cluster default)"
    )
    # How long a stage remembers, in the broker, that it settled an input (published its output or dead letter), so
    # that a second settle of the same input publishes nothing. It must outlast the longest time between two settles
    # of one input: a delivery reclaimed from a stalled consumer (reclaim_idle_s plus its work), or a retried settle
    # whose reply was lost (seconds). Ten minutes is ample for both; each key costs ~150 bytes of broker memory.
    dedupe_ttl_s: float = Field(600.0, gt=0.0, description="how long the broker remembers a settled input")
    # After a Kafka partition is assigned, its first messages are delivered one at a time, each counted in the
    # group's attempts topic before it is handed out, so a message that kills the process is seen failing and
    # dead-lettered after limits.max_retries. It must cover what a member holds unacked per partition:
    # service.max_inflight_batches x the stage's consume batch (2 x 16 at most with the defaults).
    kafka_careful_window: int = Field(32, ge=1, description="messages delivered singly, counted, after an assignment")
    # Each Kafka settle (outputs and the commit of the inputs) as one transaction: exactly once across a kill -9.
    # Proven on Apache Kafka (kill -9s, a fenced zombie, rebalances, a broker lost). Off by default: Tansu, the
    # Kafka-protocol test broker, cannot recover a killed producer's transaction (it stays open for ever, or is
    # made visible by the successor); Apache Kafka aborts it. Turn it on with Apache Kafka.
    kafka_transactions: bool = Field(False, description="settle each Kafka batch in a transaction (Apache Kafka)")


class StreamSettings(BaseModel):
    prefix: str = Field("vp", description="namespace for every stream/topic name")
    frames: str = "frames"
    tensors: str = "tensors"
    crops: str = "crops"
    results: str = "results"
    dead_letter: str = "dead"
    dead_letter_max_age_s: float = Field(7 * 86400.0, gt=0, description="dead letters are kept, whoever reads them")
    dead_letter_max_count: int = Field(10_000, ge=1, description="dead letters kept at most")
    dead_letter_max_bytes: int = Field(256 * 1024**2, ge=1, description="bytes of dead letters kept at most")

    def name(self, stream: str) -> str:
        return f"{self.prefix}.{getattr(self, stream)}" if self.prefix else getattr(self, stream)


class LimitSettings(BaseModel):
    max_image_bytes: int = 25 * 1024 * 1024
    # 50 MP: a 16-bit decompression bomb stops here, a large phone photo (48 MP) still passes.
    max_image_pixels: int = 50_000_000
    image_formats: list[str] = Field(default_factory=lambda: list(IMAGE_FORMATS), description="formats accepted")
    decode_max_pixels: int = Field(100_000_000, ge=1, description="pixels decoded at once per process (~8 B each)")
    max_message_bytes: int = 64 * 1024 * 1024
    # Ingress stops admitting above this backlog (pending + undelivered, summed over every stage's input).
    ingress_high_watermark: int = 2_000
    max_retries: int = Field(3, description="transient failures of one message before it is dead-lettered")
    # Ingress also stops while the pipeline's streams (frames to dead letters, results too) hold this many bytes (Redis:
    # MEMORY USAGE; memory: payloads; Kafka's log is not bounded here). Under maxmemory, with room to decode frames.
    ingress_max_bytes: int = Field(1024**3, ge=1, description="bytes the pipeline's streams hold: ingress refuses past")
    default_deadline_ms: float | None = Field(None, gt=0, description="deadline of a request that brings none (ms)")
    deadline_split: Literal["propagate", "static"] = Field("propagate", description="later stages' rest, or a share")


class ExecutorSettings(BaseModel):
    policy: Literal["adaptive", "slack", "fixed", "timeout", "aimd"] = "adaptive"
    slo_ms: float = Field(200.0, description="per-stage latency bound; every request's deadline is arrival + slo")
    max_batch: int = 32
    fixed_batch: int = 8
    max_queue_delay_ms: float = Field(2.0, description="timeout policy: Triton's max_queue_delay")
    overlap: bool = Field(True, description="two CUDA streams and pinned buffers: upload of n+1 during compute of n")
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    channels_last: bool = True
    cuda_graphs: bool = Field(False, description="replay the device function from CUDA graphs captured at warm-up")
    history: int = Field(64, description="batches in the latency model's least-squares window")
    fixed_timeout_ms: float | None = Field(None, description="fixed policy: send a partial batch after this wait")
    warmup_small: int = Field(1, description="warm-up times this batch size and max_batch to seed the model")
    warmup_repeats: int = Field(3, description="timed runs per warm-up batch size (after one untimed run)")
    pinned: bool = Field(True, description="serial path (overlap off): stage batches in pinned memory, not pageable")
    graph_batches: list[int] = Field(
        default_factory=list,
        description="cuda_graphs: batch sizes captured at warm-up (batches pad up to the next); empty: powers of two",
    )
    compile: Literal["off", "default", "max-autotune-no-cudagraphs"] = Field(
        "off", description="torch.compile the stage's device function with this mode (start-up costs tens of s)"
    )


class DecodeSettings(BaseModel):
    backend: Literal["auto", "dali", "nvjpeg", "cpu"] = Field(
        "auto", description="auto: DALI where DALI and a GPU are present, else nvJPEG on a GPU, else the CPU"
    )
    input_size: int = Field(640, ge=32, le=4096, description="letterboxed square side fed to the detector")
    batch: int = Field(16, ge=1, description="frames taken from the broker per decode batch")
    workers: int = Field(0, ge=0, description="CPU decode threads; 0 means every core, up to 8")
    # 114 is the grey YOLO-family letterboxes use; any mid-grey keeps padding away from both ends of the range.
    pad_value: int = Field(114, ge=0, le=255, description="grey level of the letterbox padding")


WEIGHTS_HELP = (
    "DEFAULT (the bundled model's pinned file, or torchvision's default weights), a torchvision weights name, "
    "a file (state dict, safetensors or TorchScript), or random"
)


CPU_THREADS_HELP = (
    "torch threads of this stage's model on the CPU, beside the process's other stages; 0: every core, taking "
    "turns with them (what `visionpipe run` does best on a few cores)"
)


class DetectorSettings(BaseModel):
    model: str = Field("nanodet_g", description="nanodet_g (bundled, COCO) or a torchvision detection model name")
    weights: str = Field("DEFAULT", description=WEIGHTS_HELP)
    # Chosen on 24 photos, most without any of COCO's objects (benchmarks/RESULTS.md, "Detector threshold"): the
    # highest that keeps every real object NanoDet-g finds there (the coffee's table, 0.44, is the lowest); false
    # detections still reach 0.56 (coins as clocks): only a threshold above the real cat's 0.60 drops them all.
    score_threshold: float = Field(0.43, ge=0.0, le=1.0)
    # Caps the boxes per image: each one is a crop for the classifier, and random weights produce hundreds.
    max_detections: int = Field(20, ge=1)
    # NanoDet's NMS overlap (upstream's 0.6); torchvision detectors keep their own.
    nms_iou: float = Field(0.6, gt=0.0, le=1.0)
    # One box put out as two classes (cat 0.54 and dog 0.42) overlaps itself almost exactly; two real objects of
    # different classes (a rider on a horse) rarely overlap this much. Chosen on photos: benchmarks/RESULTS.md.
    cross_class_iou: float = Field(
        0.8, gt=0.0, le=1.0, description="boxes of different classes overlapping more than this: one is kept; 1: off"
    )
    class_agnostic_nms: bool = Field(False, description="boxes of different classes suppress each other at nms_iou")
    input_size: int = Field(0, ge=0, description="side NanoDet runs at; 0 means its native 416")
    crop_size: int = Field(224, ge=16, description="side of the square crops cut for the classifier")
    # Square crops 1.2x the box's longer side classified better than tight ones (a tie: "cleaver" -> "Windsor tie").
    crop_expand: float = Field(1.2, ge=0.0, description="crops: squares this times the box's longer side; 0: the box")
    messages_per_consume: int = Field(8, ge=1, description="messages taken from the broker per consume call")
    cpu_threads: int = Field(0, ge=0, description=CPU_THREADS_HELP)


class ClassifierSettings(BaseModel):
    model: str = Field(
        "efficientnet_lite0", description="efficientnet_lite0 (bundled, ImageNet) or a torchvision classification model"
    )
    weights: str = Field("DEFAULT", description=WEIGHTS_HELP)
    top_k: int = Field(5, ge=1)
    messages_per_consume: int = Field(8, ge=1, description="messages taken from the broker per consume call")
    cpu_threads: int = Field(0, ge=0, description=CPU_THREADS_HELP)


def _default_models_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visionpipe" / "models"


class ModelsSettings(BaseModel):
    cache_dir: Path = Field(
        default_factory=_default_models_dir,
        description="where `visionpipe models fetch` puts the bundled models and the stages read them",
    )


class ServiceSettings(BaseModel):
    host: str = Field("127.0.0.1", description="address for /healthz, /readyz and /metrics; 0.0.0.0 in containers")
    # Unset, each command has its own (gateway 8000, decode 8001, detector 8002, classifier 8003, ingest 8010), so
    # processes started side by side on one machine do not collide; the containers set 8000 for all.
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
    max_inflight_batches: int = Field(2, ge=1, description="decode: consumed batches in flight")
    # Detector/classifier: one device batch computing and one filling, counted in images or crops (not messages), so a
    # device batch can reach executor.max_batch however few items one consume brings.
    prefetch_batches: float = Field(2.0, gt=0.0, description="DNN stages: device batches of requests kept in flight")
    reclaim_interval_s: float = Field(5.0, gt=0.0, description="how often a stage reclaims dead consumers' deliveries")
    # A delivery is kept ours (its idle time refreshed) while it is worked on, up to this long; past it, it is presumed
    # hung and reclaim may hand it to another consumer. Minutes: far beyond any batch, even a CPU detector's.
    work_timeout_s: float = Field(300.0, gt=0.0, description="longest a delivery is kept from reclaim while worked on")
    middleware: list[str] = Field(
        default_factory=list,
        description="policies of your own, 'package.module:Class' (built with no arguments), after the built-in ones",
    )


# A stream id travels in request ids, metric labels and URLs: short, and nothing that needs escaping.
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class StreamSource(BaseModel):
    """One source of ``visionpipe ingest``: where it is, how many frames a second go on, what to do when behind."""

    url: str = Field(
        description="a file path, rtsp://, http(s):// (HLS or MPEG-TS), a V4L2 device (/dev/videoN) or lavfi:GRAPH"
    )
    id: str | None = Field(None, pattern=STREAM_ID_PATTERN, description="stream id; default: made from the URL")
    fps: float | None = Field(None, gt=0, description="frames per second sent on; default: ingest.fps")
    policy: Literal["auto", "lossless", "latest"] = Field(
        "auto", description="lossless: backpressure pauses reading; latest: keep the newest frame, count drops"
    )
    live: bool | None = Field(None, description="reconnect on loss and default to `latest`; default: from the URL")
    annotate: str | None = Field(None, description="write the video with boxes and labels drawn here (files only)")
    deadline_ms: float | None = Field(None, gt=0, description="a frame is worthless this long after its capture")


class IngestSettings(BaseModel):
    sources: list[StreamSource] = Field(
        default_factory=list, description='streams started with the service: JSON list of URLs or {"url": ..., ...}'
    )
    fps: float | None = Field(None, gt=0, description="default frames per second sent on per stream; none: all")
    max_side: int | None = Field(None, ge=32, description="frames' long side sent on; default: decode.input_size")
    jpeg_quality: int = Field(85, ge=10, le=100)
    # Live streams keep little queued ahead of them: a frame waiting behind hundreds of others is stale, and
    # the newest-frame policy can only help when the backlog is short. Two decode batches keep decode fed.
    live_high_watermark: int = Field(32, ge=1, description="pipeline backlog above which live streams drop frames")
    file_queue_frames: int = Field(4, ge=1, description="decoded frames a file stream reads ahead")
    publish_batch: int = Field(8, ge=1, description="frames of a file stream published per call")
    open_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(3.0, gt=0, description="a live source silent this long is reconnected")
    # FFmpeg probes a live source for 5 s by default before the first frame; 0.2 s finds H.264 parameters.
    analyze_duration_s: float = Field(0.2, gt=0)
    reconnect_backoff_s: float = Field(0.25, gt=0)
    reconnect_backoff_max_s: float = Field(8.0, gt=0)
    hwaccel: Literal["none", "cuda"] = Field("none", description="cuda: NVDEC where FFmpeg and the driver allow")
    results_group: str = Field("ingest", description="consumer group of the results reader (--results, annotate)")
    api_schemes: list[str] = Field(default_factory=lambda: ["rtsp", "rtsps", "http", "https", "srt"])
    api_file_roots: list[Path] = Field(default_factory=list, description="folders the API may ingest files from")
    api_lavfi_filters: list[str] = Field(default_factory=lambda: list(LAVFI_FILTERS))

    @field_validator("sources", mode="before")
    @classmethod
    def _urls_as_sources(cls, value: Any) -> Any:
        """A bare URL is a source with the defaults."""
        if isinstance(value, list):
            return [{"url": v} if isinstance(v, str) else v for v in value]
        return value


class GatewaySettings(BaseModel):
    """The HTTP gateway (``visionpipe serve gateway``); it listens on ``service.host``/``service.port`` like every
    service, with its API, page, docs, probes and metrics on that one port."""

    wait_s: float = Field(10.0, gt=0.0, description="how long POST /v1/detect waits for its result by default")
    # A client may ask for longer with ?timeout_ms=, up to this: a wait holds a connection and a slot in memory.
    max_wait_s: float = Field(60.0, gt=0.0, description="longest wait a client may ask for with ?timeout_ms=")
    result_ttl_s: float = Field(600.0, gt=0.0, description="how long a result stays fetchable by GET /v1/results/{id}")
    max_results: int = Field(10_000, ge=1, description="newest results kept (within their TTL) by the memory store")
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
    max_upload_bytes_in_flight: int = Field(128 * 1024**2, ge=1, description="bytes of uploads held at once; 429 past")
    tokens_file: Path | None = Field(None, description="file of bearer tokens, one per line; unset: no auth")
    protect_docs_and_metrics: bool = Field(False, description="tokens guard /metrics, /docs, /openapi.json too")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty: CORS off")
    grpc_port: int = Field(8001, ge=-1, le=65535, description="the OIP gRPC port (KServe v2); 0: a free one, -1: off")
    ingest_url: str = Field(
        "", description="API of a running `visionpipe ingest` (http://host:port): /v1/streams is served here too"
    )


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
