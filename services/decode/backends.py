"""Three ways to turn a batch of encoded images into letterboxed uint8 tensors.

* ``dali``: NVIDIA DALI, mixed (nvJPEG) decoder and resize on the GPU; the
  same pipeline runs on the CPU (``device_id=None``) so CI can test it.
* ``nvjpeg``: ``torchvision.io.decode_jpeg(device="cuda")`` on the whole
  batch, resize and pad on the GPU; non-JPEG inputs take the CPU path.
* ``cpu``: Pillow in a thread pool (every core, up to 8; Pillow releases the
  GIL while decoding and resizing), with the pixels decoded at once bounded,
  each image holding one of the process's cores (``services/runtime/cores.py``)
  while it is decoded, so decode and the models' instances never ask for more
  threads than there are cores.

Each returns, per input, either ``(HWC uint8 array, Geometry)`` or a
:class:`BadImage`: one bad image never fails the others in its batch. The
CPU's array is the resized image alone; a GPU decoder's is the padded square
(one batched download), which the stage trims to the same before it is sent.
Headers are checked on the CPU first (cheap, header only), so most bad inputs
never reach a GPU batch; what still breaks a batch is retried image by image.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import numpy as np

from visionpipe import heap
from visionpipe.services.decode.images import BadImage, Geometry, Header, check_header, fit_cpu
from visionpipe.services.decode.pixels import PixelBudget
from visionpipe.services.runtime.cores import CPU
from visionpipe.settings import DecodeSettings, LimitSettings

log = logging.getLogger(__name__)

JPEG_EOI = b"\xff\xd9"
# Threads when decode.workers is 0: more cores than this add little to a stage that decodes batches of 16.
MAX_DEFAULT_WORKERS = 8
# After a batch with an image this large, malloc is asked to give its free pages back.
TRIM_AFTER_PIXELS = 4_000_000
# Look for EOI this far from the end: covers zero padding and short trailers without scanning the file.
EOI_SEARCH_BYTES = 64

Decoded: TypeAlias = tuple[np.ndarray, Geometry] | BadImage


class Decoder(ABC):
    """Decodes a batch; blocking, so stages call it in a worker thread."""

    name: str

    def __init__(self, settings: DecodeSettings, limits: LimitSettings) -> None:
        self.size = settings.input_size
        self.pad_value = settings.pad_value
        self.limits = limits
        self.threads = default_workers(settings)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        # Memory is bounded by pixels in flight, not by threads: a big host's many cores decode no more at once.
        self.budget = PixelBudget(limits.decode_max_pixels)
        self.cpu_s = 0.0  # thread time of the images decoded on the CPU, and how many: decode's work per image
        self.decoded = 0

    @abstractmethod
    def decode(self, images: Sequence[bytes]) -> list[Decoded]: ...

    def cpu_one(self, data: bytes) -> Decoded:
        with CPU.budget.held(1, "decode"):
            start = time.thread_time()
            try:
                return fit_cpu(data, self.size, self.limits, self.budget)
            except BadImage as exc:
                return exc
            finally:
                self.cpu_s += time.thread_time() - start
                self.decoded += 1

    def cpu_many(self, images: Sequence[bytes]) -> list[Decoded]:
        out = list(self.pool.map(self.cpu_one, images))
        if any(not isinstance(r, BadImage) and r[1].width * r[1].height >= TRIM_AFTER_PIXELS for r in out):
            heap.trim()  # a large image's pages go back to the OS, not kept for the next one
        return out

    def checked(self, images: Sequence[bytes], want_jpeg: bool) -> tuple[list[Decoded | None], dict[int, Header]]:
        """Header checks for a GPU batch: results so far (None = to do) and the inputs the GPU should take."""
        out: list[Decoded | None] = [None] * len(images)
        gpu: dict[int, Header] = {}
        for i, data in enumerate(images):
            try:
                header = check_header(data, self.limits)
            except BadImage as exc:
                out[i] = exc
                continue
            # Modes beyond 8-bit RGB and grey (16-bit, alpha, palettes, CMYK) and orientations the GPU path does
            # not apply take the CPU path, so every path returns the same picture for the same file.
            if (header.is_jpeg or not want_jpeg) and header.plain and self.orients(header):
                gpu[i] = header
        return out, gpu

    def orients(self, header: Header) -> bool:
        """Whether this decoder's GPU path applies ``header``'s EXIF orientation itself."""
        return header.orientation == 1

    def rest_on_cpu(self, out: list[Decoded | None], images: Sequence[bytes]) -> list[Decoded]:
        """Every input without a result yet, decoded on the CPU; the results in input order."""
        rest = [i for i, r in enumerate(out) if r is None]
        for i, r in zip(rest, self.cpu_many([images[i] for i in rest]), strict=True):
            out[i] = r
        return [r for r in out if r is not None]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class CpuDecoder(Decoder):
    name = "cpu"

    def decode(self, images: Sequence[bytes]) -> list[Decoded]:
        return self.cpu_many(images)


class NvjpegDecoder(Decoder):
    """Batched nvJPEG through torchvision; letterboxing on the GPU, one copy back per batch (``letterbox_batch``)."""

    name = "nvjpeg"

    def __init__(self, settings: DecodeSettings, limits: LimitSettings, device: str = "cuda") -> None:
        super().__init__(settings, limits)
        self.device = device

    def orients(self, header: Header) -> bool:
        return True  # orient_chw, on the device

    def decode(self, images: Sequence[bytes]) -> list[Decoded]:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        out, gpu = self.checked(images, want_jpeg=True)
        # nvJPEG decodes a truncated file without complaint (grey bottom rows); Pillow names the problem.
        gpu = {i: h for i, h in gpu.items() if _ends_with_eoi(images[i])}
        tensors: list[Any] = []
        if gpu:
            datas = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in gpu]
            try:
                tensors = decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError as exc:  # one bad JPEG fails the batch: decode one by one to find it
                log.warning("nvJPEG batch of %d failed (%s); decoding image by image", len(gpu), exc)
                tensors = [self._one(d) for d in datas]
        # nvJPEG ignores EXIF: the orientation is applied to each decoded tensor, on the device.
        decoded = [
            (i, orient_chw(img, gpu[i].orientation)) for i, img in zip(gpu, tensors, strict=True) if img is not None
        ]
        if decoded:
            orientations = [gpu[i].orientation for i, _ in decoded]
            host, geos = letterbox_batch([img for _, img in decoded], self.size, self.pad_value, orientations)
            for k, (i, _) in enumerate(decoded):
                out[i] = (host[k], geos[k])
        return self.rest_on_cpu(out, images)  # not JPEG, not plain, or nvJPEG could not: the CPU path

    def _one(self, data: Any) -> Any:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None  # the CPU path then names the reason


def letterbox_batch(
    images: Sequence[Any], size: int, pad_value: int, orientations: Sequence[int] | None = None
) -> tuple[np.ndarray, list[Geometry]]:
    """Decoded ``(3, h, w)`` uint8 images on a device, letterboxed there, back in one copy: ``(n, size, size, 3)``.

    The copy goes into pinned memory and this thread sleeps on an event until it has landed: a plain ``.cpu()``
    copies into pageable memory through the driver's staging buffer, at a fraction of the speed, with the
    thread spinning meanwhile. The batch's rows are handed out as views of that pinned block. ``orientations``:
    the EXIF orientation already applied to each image, which its geometry records.
    """
    import torch

    turns = orientations if orientations is not None else [1] * len(images)
    canvases, geos = zip(
        *(_letterbox(img, size, pad_value, o) for img, o in zip(images, turns, strict=True)), strict=True
    )
    batch = torch.stack(canvases)
    if batch.device.type == "cpu":
        return batch.numpy(), list(geos)
    host = torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True)
    host.copy_(batch, non_blocking=True)
    landed = torch.cuda.Event(blocking=True)
    landed.record()
    landed.synchronize()
    return host.numpy(), list(geos)


def _letterbox(img: Any, size: int, pad_value: int, orientation: int = 1) -> tuple[Any, Geometry]:
    """Resize and pad on the image's device; returns the HWC canvas still there."""
    import torch
    import torch.nn.functional as F

    _, h, w = img.shape
    geo = Geometry.fit(w, h, size, orientation)
    resized = F.interpolate(
        img[None].float(), size=(geo.resized_h, geo.resized_w), mode="bilinear", antialias=True, align_corners=False
    )
    canvas = torch.full((3, size, size), pad_value, dtype=torch.uint8, device=img.device)
    px, py = geo.pad
    canvas[:, py : py + geo.resized_h, px : px + geo.resized_w] = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    return canvas.permute(1, 2, 0), geo


class DaliDecoder(Decoder):
    """NVIDIA DALI: ``mixed`` decoder on a GPU, the same graph on the CPU with ``device_id=None``.

    One bad image fails a whole DALI batch, and older DALI releases left the pipeline unusable after it,
    so on failure the pipeline is rebuilt and the batch decoded image by image.
    """

    name = "dali"

    def __init__(self, settings: DecodeSettings, limits: LimitSettings, device_id: int | None = 0) -> None:
        super().__init__(settings, limits)
        self.device_id = device_id
        self.max_batch = settings.batch
        self.pipe = self._build()

    def orients(self, header: Header) -> bool:
        return header.orientation == 1 or header.is_jpeg  # DALI applies a JPEG's EXIF orientation (adjust_orientation)

    def _build(self) -> Any:
        import importlib

        # DALI's type stubs lag its API (the types enums, pipeline_def's options); it is used through Any.
        dali: Any = importlib.import_module("nvidia.dali")
        fn, pipeline_def, types = dali.fn, dali.pipeline_def, dali.types

        size, fill = self.size, self.pad_value
        on_gpu = self.device_id is not None

        @pipeline_def(
            batch_size=self.max_batch,
            num_threads=self.threads,
            device_id=self.device_id,
            prefetch_queue_depth=1,
        )
        def letterbox() -> Any:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            image = fn.decoders.image(
                encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB, adjust_orientation=True
            )
            image = fn.resize(image, resize_longer=size)
            return fn.crop(
                image, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5, out_of_bounds_policy="pad", fill_values=fill
            )

        pipe = letterbox()
        pipe.build()
        return pipe

    def _run(self, datas: list[bytes]) -> list[np.ndarray]:
        self.pipe.feed_input("encoded", [np.frombuffer(d, dtype=np.uint8) for d in datas])
        (batch,) = self.pipe.run()
        if self.device_id is not None:
            batch = batch.as_cpu()
        return [np.array(batch.at(i)) for i in range(len(datas))]

    def decode(self, images: Sequence[bytes]) -> list[Decoded]:
        out, headers = self.checked(images, want_jpeg=False)
        todo = list(headers)
        for start in range(0, len(todo), self.max_batch):
            chunk = todo[start : start + self.max_batch]
            try:
                arrays = self._run([images[i] for i in chunk])
            except Exception as exc:  # DALI reports every failure as RuntimeError-ish "Critical error"
                log.warning("DALI batch of %d failed (%s); rebuilding and decoding image by image", len(chunk), exc)
                self.pipe = self._build()
                for i in chunk:
                    out[i] = self._isolated(images[i], headers[i])
                continue
            for i, arr in zip(chunk, arrays, strict=True):
                h = headers[i]
                out[i] = (arr, Geometry.fit(h.width, h.height, self.size, h.orientation))
        return self.rest_on_cpu(out, images)

    def _isolated(self, data: bytes, header: Header) -> Decoded:
        try:
            (arr,) = self._run([data])
        except Exception:
            self.pipe = self._build()
            return self.cpu_one(data)  # names the reason, or decodes what DALI could not
        return arr, Geometry.fit(header.width, header.height, self.size, header.orientation)


def orient_chw(img: Any, orientation: int) -> Any:
    """A CHW tensor as the EXIF ``orientation`` says it is shown (the same transforms as Pillow's, on any device)."""
    flips = {2: [2], 3: [1, 2], 4: [1], 5: [], 6: [2], 7: [1, 2], 8: [1]}.get(orientation)
    if flips is None:
        return img
    if orientation >= 5:  # the axes swap first: transpose, then the flips of the transposed image
        img = img.transpose(1, 2)
    return img.flip(flips) if flips else img


def default_workers(settings: DecodeSettings) -> int:
    """The setting, else every core up to :data:`MAX_DEFAULT_WORKERS`."""
    return settings.workers or min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


def _ends_with_eoi(data: bytes) -> bool:
    """A complete JPEG ends with the EOI marker (some writers pad after it with zeros or a few spare bytes)."""
    return JPEG_EOI in data[-EOI_SEARCH_BYTES:]


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def make_decoder(settings: DecodeSettings, limits: LimitSettings, device: str) -> Decoder:
    """Pick the decode path: the setting if named, else DALI > nvJPEG > CPU by what this machine has."""
    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    backend = settings.backend
    if backend == "auto":
        backend = ("dali" if dali_available() else "nvjpeg") if cuda else "cpu"
    if backend == "dali":
        return DaliDecoder(settings, limits, device_id=torch.cuda.current_device() if cuda else None)
    if backend == "nvjpeg":
        if not cuda:
            raise RuntimeError("decode backend nvjpeg needs a CUDA device; use cpu or dali")
        return NvjpegDecoder(settings, limits)
    return CpuDecoder(settings, limits)
