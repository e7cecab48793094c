"""Decode paths: letterbox geometry, good formats, every kind of bad input isolated from the good ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.services.helpers import TEST_MAX_PIXELS, bad_images, good_images
from visionpipe.envelope import Envelope
from visionpipe.hops import EncodedImage, Letterboxed
from visionpipe.samples import scene_jpeg
from visionpipe.services.decode.backends import (
    CpuDecoder,
    DaliDecoder,
    NvjpegDecoder,
    dali_available,
    letterbox_batch,
)
from visionpipe.services.decode.images import BadImage, Geometry, letterbox_cpu, place
from visionpipe.services.decode.stage import DecodeStage
from visionpipe.settings import DecodeSettings, LimitSettings, load_settings

SIZE = 320
PAD = 114
LIMITS = LimitSettings(max_image_pixels=TEST_MAX_PIXELS)
SETTINGS = DecodeSettings(input_size=SIZE, batch=8, workers=2, pad_value=PAD)


@pytest.mark.parametrize(
    ("w", "h", "resized", "pad"),
    [
        (640, 480, (320, 240), (0, 40)),
        (300, 500, (192, 320), (64, 0)),
        (1920, 1080, (320, 180), (0, 70)),
        (320, 320, (320, 320), (0, 0)),
    ],
)
def test_geometry_maps_corners_back(w: int, h: int, resized: tuple[int, int], pad: tuple[int, int]) -> None:
    geo = Geometry.fit(w, h, SIZE)
    assert (geo.resized_w, geo.resized_h) == resized
    assert geo.pad == pad
    sx, sy = geo.scale
    # The far corner of the original lands on the far corner of the resized region.
    assert (w * sx + pad[0], h * sy + pad[1]) == pytest.approx((pad[0] + resized[0], pad[1] + resized[1]))


def _check_good(results: list) -> None:
    """The CPU's images come resized without their padding; a GPU decoder's as the padded square."""
    for out in results:
        assert not isinstance(out, BadImage), out
        arr, geo = out
        assert arr.dtype == np.uint8
        if arr.shape == (geo.resized_h, geo.resized_w, 3):
            arr = place(arr, geo, PAD)
        assert arr.shape == (SIZE, SIZE, 3)
        px, py = geo.pad
        if py:  # padding is the pad grey, the image region is not
            assert (arr[: py - 1] == PAD).all()
        if px:
            assert (arr[:, : px - 1] == PAD).all()
        centre = arr[py + geo.resized_h // 2, px + geo.resized_w // 2]
        assert centre.shape == (3,)


def _check_mixed(decoder: CpuDecoder | DaliDecoder | NvjpegDecoder) -> None:
    good, bad = good_images(), bad_images()
    inputs = [good[0], *bad.values(), *good[1:]]
    results = decoder.decode(inputs)
    assert len(results) == len(inputs)
    _check_good([results[0], *results[-2:]])
    for (words, _), out in zip(bad.items(), results[1:-2], strict=True):
        assert isinstance(out, BadImage), words
        assert words in out.reason, (words, out.reason)


def test_cpu_decoder_isolates_each_bad_input() -> None:
    decoder = CpuDecoder(SETTINGS, LIMITS)
    try:
        _check_mixed(decoder)
    finally:
        decoder.close()


async def test_the_stage_sends_the_resized_image_without_its_padding() -> None:
    """A 640x480 photo crosses to the detector as 320x240, which pads it back to the very letterbox."""
    settings = load_settings(decode=SETTINGS.model_dump(), limits=LIMITS.model_dump(), service={"device": "cpu"})
    stage = DecodeStage(settings)
    await stage.start()
    try:
        jpeg = scene_jpeg(640, 480, seed=4)
        (out,) = await stage.process([EncodedImage(jpeg).write(Envelope("r"))])
    finally:
        await stage.stop()
    assert isinstance(out, Envelope)
    hop = Letterboxed.read(out, SIZE)
    assert hop.image.shape == (240, 320, 3)
    assert np.array_equal(hop.square(SIZE, PAD), letterbox_cpu(jpeg, SIZE, LIMITS, PAD)[0])


def test_cpu_decoder_rejects_oversized_bytes() -> None:
    decoder = CpuDecoder(SETTINGS, LimitSettings(max_image_bytes=1000))
    try:
        (out,) = decoder.decode([scene_jpeg(640, 480)])
    finally:
        decoder.close()
    assert isinstance(out, BadImage) and "exceeds the limit of 1000" in out.reason


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed (make test installs it into .ci-dali)")
def test_dali_cpu_pipeline_matches_cpu_geometry_and_survives_bad_batch() -> None:
    """The DALI graph on the CPU (device_id=None): same letterbox as the CPU path, bad images isolated."""
    decoder = DaliDecoder(SETTINGS, LIMITS, device_id=None)
    cpu = CpuDecoder(SETTINGS, LIMITS)
    try:
        _check_mixed(decoder)
        # A JPEG whose header passes but whose data is garbage fails a DALI batch; the others still decode.
        jpeg = scene_jpeg(640, 480, seed=5)
        scan = jpeg.find(b"\xff\xda") + 14  # the first scan's data, past its header
        corrupt = jpeg[:scan] + bytes(len(jpeg) - scan)
        before = decoder.pipe
        results = decoder.decode([jpeg, corrupt, jpeg])
        assert not isinstance(results[0], BadImage) and not isinstance(results[2], BadImage)
        assert isinstance(results[1], BadImage)
        # DALI declares a pipeline that failed a batch invalid: it was rebuilt, and the new one decodes a full batch.
        assert decoder.pipe is not before
        again = decoder.decode([jpeg] * 4)
        assert all(not isinstance(r, BadImage) for r in again)
        ref = cpu.decode([jpeg])[0]
        assert not isinstance(ref, BadImage)
        # Different resamplers: the same picture in the same place, not the same bytes. DALI's is the letterbox
        # square (the stage trims it), the CPU's the resized image alone.
        square, geo = results[0]
        (px, py), h, w = geo.pad, geo.resized_h, geo.resized_w
        assert ref[0].shape[:2] == (h, w) and square.shape[:2] == (SIZE, SIZE)
        diff = np.abs(square[py : py + h, px : px + w].astype(int) - ref[0].astype(int))
        assert diff.mean() < 12
    finally:
        decoder.close()
        cpu.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_decoder_batches_on_gpu_and_isolates_bad() -> None:
    decoder = NvjpegDecoder(SETTINGS, LIMITS)
    try:
        _check_mixed(decoder)
    finally:
        decoder.close()


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and dali_available()), reason="needs CUDA and DALI")
def test_dali_mixed_decoder_on_gpu() -> None:
    decoder = DaliDecoder(SETTINGS, LIMITS, device_id=0)
    try:
        _check_mixed(decoder)
    finally:
        decoder.close()


def test_truncated_jpeg_never_reaches_nvjpeg() -> None:
    """nvJPEG decodes a file cut short without an error, so such files are routed to the CPU path, which names it."""
    from visionpipe.services.decode.backends import _ends_with_eoi

    jpeg = scene_jpeg(640, 480)
    assert _ends_with_eoi(jpeg) and _ends_with_eoi(jpeg + bytes(16))
    assert not _ends_with_eoi(jpeg[: len(jpeg) // 2])


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed (make test installs it into .ci-dali)")
def test_dali_backend_by_setting_runs_on_the_cpu_without_a_gpu() -> None:
    """``decode.backend = dali`` on a machine without CUDA: the same graph on the CPU, not an error."""
    from visionpipe.services.decode.backends import make_decoder

    settings = SETTINGS.model_copy(update={"backend": "dali"})
    decoder = make_decoder(settings, LIMITS, "cpu")
    try:
        assert isinstance(decoder, DaliDecoder) and decoder.device_id is None
        _check_good(decoder.decode(good_images()))
    finally:
        decoder.close()


def test_the_gpu_letterbox_path_runs_on_cpu_tensors_and_matches_pillow() -> None:
    """``letterbox_batch`` (nvJPEG's resize, pad and one copy back) on decoded CPU tensors: same picture, same place."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [scene_jpeg(640, 480, seed=3), scene_jpeg(300, 500, seed=4)]
    decoded = [decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8), mode=ImageReadMode.RGB) for j in jpegs]
    host, geos = letterbox_batch(decoded, SIZE, PAD)
    assert host.shape == (2, SIZE, SIZE, 3) and host.dtype == np.uint8
    cpu = CpuDecoder(SETTINGS, LIMITS)
    try:
        for k, jpeg in enumerate(jpegs):
            ref = cpu.decode([jpeg])[0]
            assert not isinstance(ref, BadImage) and ref[1] == geos[k]
            square = place(ref[0], ref[1], PAD)  # the CPU's is the resized image alone
            assert np.abs(host[k].astype(int) - square.astype(int)).mean() < 12
    finally:
        cpu.close()
