"""The settings of the work itself: the batch executor, decode, the DNN stages and their models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


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


class InstanceSettings(BaseModel):
    """How a DNN stage runs its model: instances (executors with their own batches) and where they are placed."""

    instances: int = Field(0, ge=0, description="executors per device; 0: on the CPU planned from costs, a GPU 1")
    threads: int = Field(0, ge=0, description="CPU threads per instance; 0: 1 if planned, else cores / instances")
    devices: str = Field("", description="cpu, cuda:0,cuda:1,... or all (every GPU); empty: service.device")


class DetectorSettings(InstanceSettings):
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


class ClassifierSettings(InstanceSettings):
    model: str = Field(
        "efficientnet_lite0", description="efficientnet_lite0 (bundled, ImageNet) or a torchvision classification model"
    )
    weights: str = Field("DEFAULT", description=WEIGHTS_HELP)
    top_k: int = Field(5, ge=1)
    messages_per_consume: int = Field(8, ge=1, description="messages taken from the broker per consume call")


def _default_models_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visionpipe" / "models"


class ModelsSettings(BaseModel):
    cache_dir: Path = Field(
        default_factory=_default_models_dir,
        description="where `visionpipe models fetch` puts the bundled models and the stages read them",
    )
