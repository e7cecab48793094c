"""Decode paths side by side on the same files: ``python -m visionpipe.services.decode.bench DIR... [--json FILE]``.

Each directory (e.g. the ``vga/`` and ``hd/`` folders written by
``python -m visionpipe.services.samples --bench``) is decoded and letterboxed
in batches by every path this machine has (CPU always; DALI on the CPU when
installed; nvJPEG and DALI-mixed on a GPU); the best of a few passes counts,
so one hiccup of a shared machine does not decide the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from visionpipe.services.decode.backends import CpuDecoder, DaliDecoder, Decoder, NvjpegDecoder, dali_available
from visionpipe.settings import DecodeSettings, LimitSettings

PASSES = 3


def decoders(settings: DecodeSettings, limits: LimitSettings) -> list[Decoder]:
    import torch

    out: list[Decoder] = [CpuDecoder(settings, limits)]
    if dali_available():
        out.append(DaliDecoder(settings, limits, device_id=None))
    if torch.cuda.is_available():
        out.append(NvjpegDecoder(settings, limits))
        if dali_available():
            out.append(DaliDecoder(settings, limits, device_id=0))
    return out


def images_per_s(decoder: Decoder, images: list[bytes], batch: int) -> float:
    decoder.decode(images[:batch])  # warm-up: thread pools, DALI graph, CUDA context
    best = 0.0
    for _ in range(PASSES):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            decoder.decode(images[i : i + batch])
        best = max(best, len(images) / (time.perf_counter() - start))
    return best


def _label(decoder: Decoder) -> str:
    if isinstance(decoder, DaliDecoder):
        return "dali-gpu" if decoder.device_id is not None else "dali-cpu"
    names = {"cpu": f"pillow-{decoder.pool._max_workers}-threads", "nvjpeg": "nvjpeg-gpu"}
    return names.get(decoder.name, decoder.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = DecodeSettings(input_size=args.size, batch=args.batch)
    results: dict[str, dict[str, float]] = {}
    for decoder in decoders(settings, LimitSettings()):
        label = _label(decoder)
        for folder in args.dirs:
            images = [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]
            results.setdefault(folder.name, {})[label] = round(images_per_s(decoder, images, args.batch), 1)
        decoder.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
