"""The settings of what carries messages: the broker, the streams' names and bounds, admission limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")  # Pillow's; EPS would run Ghostscript


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
