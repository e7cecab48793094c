"""Decode stage: frames (``EncodedImage``) in, resized uint8 HWC images plus their geometry (``Letterboxed``) out.

The output image is HWC because every decoder produces HWC; the detector
views a batch of them as NCHW in channels-last layout on the device, which is
the layout convolutions prefer on a GPU, so no transpose is ever copied. Only
the resized image goes out, not the grey padding around it in the detector's
square: a quarter fewer bytes on the wire for a 4:3 photo, 44 % for 16:9; the
detector pads it as it would have been (``Letterboxed.square``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from visionpipe import heap
from visionpipe.envelope import Envelope, Event
from visionpipe.executor.torch_device import resolve_device
from visionpipe.hops import EncodedImage, HopError, Letterboxed
from visionpipe.services.decode.backends import Decoder, make_decoder
from visionpipe.services.decode.images import BadImage
from visionpipe.services.runtime.cores import CPU
from visionpipe.services.runtime.stage import BadInput, BatchStage, Outcome
from visionpipe.settings import Settings
from visionpipe.topology import DECODE


class DecodeStage(BatchStage):
    name = DECODE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.decoder: Decoder | None = None

    async def start(self) -> None:
        heap.keep_large_blocks_mapped()  # a decoded large image's memory goes back to the OS once it is done with
        device = resolve_device(self.settings.service.device)
        self.decoder = await asyncio.to_thread(make_decoder, self.settings.decode, self.settings.limits, device)

    @property
    def backend(self) -> str:
        return self.decoder.name if self.decoder is not None else "none"

    @property
    def ready(self) -> bool:
        return self.decoder is not None

    async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        assert self.decoder is not None, "start() first"
        frames: list[EncodedImage | BadInput] = []
        for env in envelopes:
            try:
                frames.append(EncodedImage.read(env))
            except HopError as exc:
                frames.append(BadInput(exc.reason))
        start = time.time_ns()
        decoded = await asyncio.to_thread(
            self.decoder.decode, [f.image if isinstance(f, EncodedImage) else b"" for f in frames]
        )
        done = time.time_ns()
        if self.decoder.decoded:  # decode's work per image, beside the models' when the process plans its cores
            CPU.report(self.name, self.decoder.cpu_s / self.decoder.decoded)
        out: list[Outcome] = []
        for env, frame, result in zip(envelopes, frames, decoded, strict=True):
            if isinstance(frame, BadInput):
                out.append(frame)
            elif isinstance(result, BadImage):
                out.append(BadInput(result.reason))
            else:
                array, geo = result
                if array.shape[:2] != (geo.resized_h, geo.resized_w):  # a GPU decoder's square: only its content goes
                    (px, py), h, w = geo.pad, geo.resized_h, geo.resized_w
                    array = array[py : py + h, px : px + w]
                hop = Letterboxed(array, geo.width, geo.height, geo.scale, geo.pad, self.backend, geo.orientation)
                child = hop.write(env)
                child.stamp(self.name, Event.BATCH_START, start)
                child.stamp(self.name, Event.COMPUTE_DONE, done)
                out.append(child)
        return out

    async def stop(self) -> None:
        CPU.leave(self.name)
        if self.decoder is not None:
            self.decoder.close()
