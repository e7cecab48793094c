"""The baseline: what a user would write by hand instead of visionpipe — one process, one loop, no broker.

Pillow decode and letterbox to 640, the detector in batches of 4, each image's boxes (at most
``--max-detections``, default 20) cut as square crops with ``roi_align`` (or, ``--crops resize``,
as the stages cut them on the CPU), the classifier on the crops, top 5. Same models, weights and
model preparation as the stages (channels_last where the bundled model says so, BatchNorm folded
in the classifier; on a GPU, ``--device cuda``, channels_last and fp16 autocast as the stages'
defaults), so a comparison with ``visionpipe run`` on the same files measures the pipeline, not
the models. Loading and one warm-up batch are outside the timing, as ``visionpipe run``'s start-up
is; each batch's top 5 is read back to the host, as any script that uses it must.

``python -m visionpipe.loadgen.bench.plain_script IMAGES... [--detector ...] [--json out.json]``;
``visionpipe bench pipeline`` runs it beside ``visionpipe run``.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms, roi_align

from visionpipe.services.models.efficientnet_lite import fuse_batchnorm
from visionpipe.services.models.loading import LoadedModel, load_model
from visionpipe.services.models.nanodet import INPUT_SIZE, decode_boxes, prepare
from visionpipe.settings import load_settings

SIZE = 640
BATCH = 4
CROP = 224
CROP_EXPAND = 1.2  # the stages' default square crops
GREY = 114
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
PHASES = ("decode", "detector", "crops", "classifier")


def letterbox(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    scale = SIZE / max(rgb.size)
    w, h = round(rgb.width * scale), round(rgb.height * scale)
    canvas = Image.new("RGB", (SIZE, SIZE), (GREY, GREY, GREY))
    canvas.paste(rgb.resize((w, h), Image.Resampling.BILINEAR), ((SIZE - w) // 2, (SIZE - h) // 2))
    return np.asarray(canvas)


def per_image_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, cap: int) -> torch.Tensor:
    """What one writes by hand: every (location, class) above the threshold, NMS per class (IoU 0.6), the best."""
    loc, cls = (scores > threshold).nonzero(as_tuple=True)
    keep = batched_nms(boxes[loc], scores[loc, cls], cls, 0.6)[:cap]
    return boxes[loc][keep]


def detector(
    model: LoadedModel, threshold: float, cap: int, device: str = "cpu"
) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """``x (B, 3, S, S)`` uint8 -> each image's boxes (at most ``cap``, above ``threshold``)."""
    module = model.module.to(device)
    if model.arch == "nanodet_g":
        if model.channels_last_on_cpu or device != "cpu":
            module = module.to(memory_format=torch.channels_last)

        def nanodet(x: torch.Tensor) -> list[torch.Tensor]:
            inp = prepare(x, INPUT_SIZE).contiguous(memory_format=torch.channels_last)
            scores, reg = module(inp)
            boxes = decode_boxes(reg, INPUT_SIZE) * (SIZE / INPUT_SIZE)
            return [per_image_nms(boxes[i], scores[i], threshold, cap) for i in range(x.shape[0])]

        return nanodet
    for holder in (module, getattr(module, "roi_heads", None)):
        if holder is not None and hasattr(holder, "score_thresh"):
            holder.score_thresh, holder.detections_per_img = threshold, cap

    def torchvision_detector(x: torch.Tensor) -> list[torch.Tensor]:
        out = module(list(x.float() / 255))
        return [d["boxes"][d["scores"] >= threshold][:cap] for d in out]

    return torchvision_detector


def squares(boxes: torch.Tensor) -> torch.Tensor:
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True) * CROP_EXPAND / 2
    return torch.cat((c - half, c + half), 1)


def resized_crops(x: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
    """The stages' CPU crops (each box sliced and resized in uint8), for a baseline that cuts as they do."""
    from visionpipe.services.detector.ops import cut_each

    k = max(len(b) for b in boxes)
    padded = torch.stack([torch.cat((b, b.new_zeros(k - len(b), 4))) for b in boxes])
    crops = cut_each(x, padded, torch.tensor([len(b) for b in boxes]), CROP)
    return torch.cat([crops[i, : len(b)] for i, b in enumerate(boxes)]).float()


def run(
    paths: list[Path],
    det: LoadedModel,
    cls: LoadedModel,
    threshold: float,
    cap: int,
    crop_with: str = "roi_align",
    device: str = "cpu",
) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    detect = detector(det, threshold, cap, device)
    classifier = fuse_batchnorm(cls.module).to(device)
    if cls.channels_last_on_cpu or cuda:
        classifier = classifier.to(memory_format=torch.channels_last)
    mean, std = MEAN.to(device), STD.to(device)
    # Seconds in each step over the timed images (on the CPU; a GPU's steps overlap the host's, so not there).
    phases = dict.fromkeys(PHASES, 0.0)

    def step(chunk: list[Path]) -> int:
        t = [time.perf_counter()]
        x = torch.from_numpy(np.stack([letterbox(p) for p in chunk])).permute(0, 3, 1, 2).to(device)
        t.append(time.perf_counter())
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            boxes = [squares(b.float()) for b in detect(x)]
            t.append(time.perf_counter())
            if sum(len(b) for b in boxes) == 0:
                return 0
            if crop_with == "roi_align":
                crops = roi_align(x.float(), boxes, (CROP, CROP), 1.0, 2, True).round_().clamp_(0, 255)
            else:
                crops = resized_crops(x, boxes)
            t.append(time.perf_counter())
            crops = ((crops - mean) / std).contiguous(memory_format=torch.channels_last)
            classifier(crops).float().softmax(1).topk(5, dim=1).indices.cpu()
        t.append(time.perf_counter())
        for phase, (a, b) in zip(PHASES, itertools.pairwise(t), strict=True):
            phases[phase] += b - a
        return len(crops)

    with torch.inference_mode():
        step(paths[:BATCH])  # warm-up, as visionpipe run's start-up
        phases.update(dict.fromkeys(PHASES, 0.0))
        times, crops = [], 0
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(paths), BATCH):
            t0 = time.perf_counter()
            crops += step(paths[i : i + BATCH])
            times.append(time.perf_counter() - t0)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "cpu_ms_per_image": round(cpu / len(paths) * 1e3, 1),
        "images": len(paths),
        "images_per_s": round(len(paths) / elapsed, 3),
        "elapsed_s": round(elapsed, 3),
        "crops_per_image": round(crops / len(paths), 2),
        "batch_ms_p50": round(statistics.median(times) * 1e3, 1),
        # Wall ms per image in each step; run with one thread, their sum is the single-thread cost of an image.
        **({} if cuda else {"ms_per_image": {k: round(v / len(paths) * 1e3, 2) for k, v in phases.items()}}),
    }


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--detector", "detector_name", default=None, help="default: the detector setting (nanodet_g)")
@click.option("--classifier", "classifier_name", default=None, help="default: the classifier setting")
@click.option("--weights", default="DEFAULT", show_default=True)
@click.option("--score-threshold", type=float, default=None, help="default: the detector setting (0.4)")
@click.option("--max-detections", type=int, default=20, show_default=True)
@click.option("--threads", type=int, default=0, help="torch threads; 0: torch's default (every core)")
@click.option(
    "--crops",
    type=click.Choice(["roi_align", "resize"]),
    default="roi_align",
    show_default=True,
    help="roi_align as a user would write it, or each box resized in uint8 as the stages do on the CPU",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    images: tuple[Path, ...],
    detector_name: str | None,
    classifier_name: str | None,
    weights: str,
    score_threshold: float | None,
    max_detections: int,
    threads: int,
    crops: str,
    device: str,
    json_path: Path | None,
) -> None:
    """Decode, detect, crop and classify IMAGES in one plain loop; print images/s as JSON."""
    if threads:
        torch.set_num_threads(threads)
    settings = load_settings()
    cache = settings.models.cache_dir
    det = load_model("detection", detector_name or settings.detector.model, weights, cache)
    cls = load_model("classification", classifier_name or settings.classifier.model, weights, cache)
    threshold = settings.detector.score_threshold if score_threshold is None else score_threshold
    result: dict[str, object] = {"threads": torch.get_num_threads(), "crops": crops, "device": device}
    result |= run(list(images), det, cls, threshold, max_detections, crops, device)
    text = json.dumps(result)
    click.echo(text)
    if json_path is not None:
        json_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
