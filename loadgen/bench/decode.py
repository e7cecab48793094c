"""``visionpipe bench decode DIR...``: the decode paths side by side on the same files.

Each directory (e.g. the ``vga/`` and ``hd/`` folders written by
``python -m visionpipe.samples --bench``) is decoded and letterboxed
in batches by every path this machine has (CPU always; DALI on the CPU when
installed; nvJPEG and DALI-mixed on a GPU); the best of a few passes counts,
so one hiccup of a shared machine does not decide the ratio.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

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


@click.command("decode")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--size", type=int, default=640, show_default=True, help="letterbox side")
@click.option("--batch", type=int, default=16, show_default=True, help="images per decode call")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write results here")
def bench_decode(dirs: tuple[Path, ...], size: int, batch: int, json_path: Path | None) -> None:
    """Images/s of every decode path this machine has (Pillow, DALI on the CPU, nvJPEG, DALI mixed) per folder."""
    settings = DecodeSettings(input_size=size, batch=batch)
    results: dict[str, dict[str, float]] = {}
    for decoder in decoders(settings, LimitSettings()):
        label = _label(decoder)
        for folder in dirs:
            images = [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]
            results.setdefault(folder.name, {})[label] = round(images_per_s(decoder, images, batch), 1)
        decoder.close()
    text = json.dumps(results, indent=2)
    click.echo(text)
    if json_path is not None:
        json_path.write_text(text + "\n")
