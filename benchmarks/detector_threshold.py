"""Where the detector's default score threshold and cross-class overlap come from: false detections on photos.

Runs the bundled detector (NanoDet-g, through the stage's own device function: letterbox 640, NanoDet at
416) over scikit-image's bundled photographs — some with objects of COCO's classes, most without (a retina,
a stained tissue slide, the moon, coins, text, textures) — keeping every box above a floor, then counts, for
each candidate threshold and cross-class overlap:

- hits: (photo, label) pairs found that the photo does show (astronaut: person; coffee: cup, spoon, dining table);
- misses: (photo, label) pairs it shows that nothing found;
- false: detections whose label the photo does not show (the moon as "kite", coins as "clock").

Needs scikit-image (not a visionpipe dependency): ``/work/main/.venv/bin/pip install scikit-image``, then
``.venv/bin/python benchmarks/detector_threshold.py --json benchmarks/detector-threshold.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from visionpipe.services.decode.images import letterbox_cpu
from visionpipe.services.detector.model import detector_fn
from visionpipe.services.detector.ops import pairwise_iou
from visionpipe.services.models.loading import load_model
from visionpipe.settings import Settings

# What each photo shows, in COCO's labels, by eye; () = nothing of COCO's 80 classes.
TRUTH: dict[str, tuple[str, ...]] = {
    "astronaut": ("person",),
    "camera": ("person",),
    "chelsea": ("cat",),
    "coffee": ("cup", "spoon", "dining table"),
    "motorcycle": ("motorcycle", "bicycle", "bench", "chair"),
    "clock": ("clock",),  # motion-blurred
    "horse": ("horse",),  # a silhouette
    "rocket": (),
    "retina": (),
    "immunohistochemistry": (),
    "moon": (),
    "coins": (),
    "brick": (),
    "grass": (),
    "gravel": (),
    "hubble_deep_field": (),
    "page": (),
    "text": (),
    "cell": (),
    "microaneurysms": (),
    "shepp_logan_phantom": (),
    "checkerboard": (),
    "logo": (),
    "colorwheel": (),
}
FLOOR = 0.2
THRESHOLDS = [round(0.30 + 0.01 * i, 2) for i in range(41)]  # 0.30 .. 0.70
CROSS_CLASS = (1.0, 0.9, 0.8, 0.7, 0.6)


def photo(name: str) -> bytes:
    import skimage.data as data

    a = np.asarray(data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)())
    if a.dtype == bool:
        a = np.where(a, 0, 255).astype(np.uint8)  # the horse: a black silhouette on white
    elif a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    buf = io.BytesIO()
    Image.fromarray(a).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def detect_all(settings: Settings, cross: float) -> dict[str, list[dict[str, Any]]]:
    det = load_model("detection", settings.detector.model, "DEFAULT", settings.models.cache_dir)
    floor = settings.detector.model_copy(
        update={"score_threshold": FLOOR, "cross_class_iou": cross, "class_agnostic_nms": False, "max_detections": 100}
    )
    fn = detector_fn(det, floor, settings.executor, "cpu")
    found = {}
    for name in TRUTH:
        image, _ = letterbox_cpu(photo(name), 640, settings.limits, settings.decode.pad_value)
        out = fn(torch.from_numpy(image)[None])
        n = int(out["count"][0])
        found[name] = [
            {
                "label": det.label_name(int(out["labels"][0, i])),
                "score": round(float(out["scores"][0, i]), 4),
                "box": [round(v, 1) for v in out["boxes"][0, i].tolist()],
            }
            for i in range(n)
        ]
    return found


def count(found: dict[str, list[dict[str, Any]]], threshold: float) -> dict[str, Any]:
    hits = misses = false = 0
    false_photos = []
    for name, shows in TRUTH.items():
        kept = [d for d in found[name] if d["score"] > threshold]
        labels = {d["label"] for d in kept}
        hits += len(labels & set(shows))
        misses += len(set(shows) - labels)
        wrong = [d for d in kept if d["label"] not in shows]
        false += len(wrong)
        if wrong:
            false_photos.append(name)
    return {"threshold": threshold, "hits": hits, "misses": misses, "false": false, "false_photos": false_photos}


def two_labels_one_box(found: dict[str, list[dict[str, Any]]], threshold: float) -> list[dict[str, Any]]:
    """Pairs of kept boxes of different labels and how much they overlap (what cross_class_iou decides)."""
    pairs = []
    for name, dets in found.items():
        kept = [d for d in dets if d["score"] > threshold]
        if len(kept) < 2:
            continue
        iou = pairwise_iou(torch.tensor([[d["box"] for d in kept]]))[0]
        for i in range(len(kept)):
            for j in range(i + 1, len(kept)):
                if kept[i]["label"] != kept[j]["label"] and iou[i, j] > 0.5:
                    a, b = kept[i], kept[j]
                    pairs.append(
                        {"photo": name, "iou": round(float(iou[i, j]), 3), "kept": a["label"], "score": a["score"]}
                        | {"other": b["label"], "other_score": b["score"]}
                    )
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared box: one core, steady
    settings = Settings()
    load = os.getloadavg()
    t0 = time.time()
    runs = {}
    for cross in CROSS_CLASS:
        found = detect_all(settings, cross)
        runs[str(cross)] = {
            "sweep": [count(found, t) for t in THRESHOLDS],
            "two_labels_one_box_at_0.3": two_labels_one_box(found, 0.3),
        }
        if cross in (1.0, settings.detector.cross_class_iou):  # what each photo gave, for the default and for "off"
            runs[str(cross)]["found"] = {
                name: ", ".join(f"{d['label']} {d['score']:.2f}" for d in dets) for name, dets in found.items()
            }
    doc = {
        "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0)),
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
        "model": settings.detector.model,
        "floor": FLOOR,
        "truth": TRUTH,
        "runs": runs,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    for cross, run in runs.items():
        print(f"cross_class_iou {cross}: two labels on one box at 0.3: {len(run['two_labels_one_box_at_0.3'])}")
        for row in run["sweep"][::5]:
            print(
                f"  t={row['threshold']:.2f} hits {row['hits']} misses {row['misses']} false {row['false']} "
                f"on {len(row['false_photos'])} photos"
            )


if __name__ == "__main__":
    main()
