"""Every pixel mode Pillow reads comes out as the RGB a viewer shows, and every EXIF orientation is applied, on every
decode path this machine has (the CPU; DALI's graph on the CPU; nvJPEG where there is CUDA)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from visionpipe.services.decode.backends import CpuDecoder, DaliDecoder, Decoder, NvjpegDecoder, dali_available
from visionpipe.services.decode.images import BadImage, check_header
from visionpipe.services.decode.pixels import ORIENT, orient
from visionpipe.settings import DecodeSettings, LimitSettings

SIZE = 64
SETTINGS = DecodeSettings(input_size=SIZE, batch=8, workers=2)
LIMITS = LimitSettings()
W, H = 64, 32  # wider than tall: an orientation that swaps the axes shows up in the geometry
TOLERANCE = 12  # JPEG and resampling noise on flat regions


def _paths() -> list[str]:
    paths = ["cpu"]
    if dali_available():
        paths.append("dali-cpu")
    if torch.cuda.is_available():
        paths.append("nvjpeg")
    return paths


@pytest.fixture(params=_paths())
def decoder(request: pytest.FixtureRequest) -> Iterator[Decoder]:
    made: Decoder = {
        "cpu": lambda: CpuDecoder(SETTINGS, LIMITS),
        "dali-cpu": lambda: DaliDecoder(SETTINGS, LIMITS, device_id=None),
        "nvjpeg": lambda: NvjpegDecoder(SETTINGS, LIMITS),
    }[request.param]()
    yield made
    made.close()


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded(decoder: Decoder, data: bytes) -> tuple[np.ndarray, int, int]:
    """The image region of the letterbox (padding cut away), and the displayed width and height.

    The CPU decoder gives the resized image alone; a GPU decoder the padded square.
    """
    (out,) = decoder.decode([data])
    assert not isinstance(out, BadImage), out.reason
    arr, geo = out
    if arr.shape[:2] == (geo.resized_h, geo.resized_w):
        return arr.astype(int), geo.width, geo.height
    px, py = geo.pad
    return arr[py : py + geo.resized_h, px : px + geo.resized_w].astype(int), geo.width, geo.height


def halves(left: float, right: float) -> np.ndarray:
    """A W x H picture, the left half at ``left`` and the right half at ``right`` of full scale."""
    out = np.empty((H, W), dtype=np.float64)
    out[:, : W // 2], out[:, W // 2 :] = left, right
    return out


def assert_halves(region: np.ndarray, left: tuple[int, ...], right: tuple[int, ...]) -> None:
    w = region.shape[1]
    lo, hi = region[4:-4, 2 : w // 2 - 4].mean(axis=(0, 1)), region[4:-4, w // 2 + 4 : -2].mean(axis=(0, 1))
    assert np.abs(lo - left).max() < TOLERANCE, (lo, left)
    assert np.abs(hi - right).max() < TOLERANCE, (hi, right)


# (what, file, the left and right halves a viewer shows)
def mode_cases() -> dict[str, tuple[bytes, tuple[int, ...], tuple[int, ...]]]:
    dark_light = halves(0.25, 0.75)
    i16 = Image.fromarray(np.rint(dark_light * 65535).astype(np.uint16))
    i32 = Image.fromarray(np.rint(dark_light * 65535).astype(np.int32), "I")
    f32 = Image.fromarray(dark_light.astype(np.float32), "F")
    palette = Image.new("P", (W, H), 1)
    palette.putpalette([0, 0, 0, 200, 30, 30, 0, 0, 255] + [0] * 759)
    palette.paste(2, (0, 0, W // 2, H))  # the left half: palette entry 2, declared transparent
    la = Image.merge(
        "LA", [Image.new("L", (W, H), 40), Image.fromarray(np.where(halves(0, 1) > 0, 255, 0).astype("u1"))]
    )
    rgba = Image.new("RGBA", (W, H), (10, 200, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, W // 2, H))
    cmyk = Image.new("CMYK", (W, H), (0, 255, 255, 0))  # red
    cmyk.paste((255, 0, 255, 0), (0, 0, W // 2, H))  # green on the left
    grey, light = (64, 64, 64), (191, 191, 191)
    return {
        "I;16 PNG (16-bit grey)": (encode(i16, "PNG"), grey, light),
        "I TIFF (32-bit integers)": (encode(i32, "TIFF"), grey, light),
        "F TIFF (floats 0-1)": (encode(f32, "TIFF"), grey, light),
        "P PNG with a transparent entry": (encode(palette, "PNG", transparency=2), (255, 255, 255), (200, 30, 30)),
        "LA PNG (grey and alpha)": (encode(la, "PNG"), (255, 255, 255), (40, 40, 40)),
        "RGBA PNG": (encode(rgba, "PNG"), (255, 255, 255), (10, 200, 10)),
        "CMYK JPEG": (encode(cmyk, "JPEG", quality=95), (0, 255, 0), (255, 0, 0)),
        "CMYK TIFF": (encode(cmyk, "TIFF"), (0, 255, 0), (255, 0, 0)),
        "1 PNG (bilevel)": (encode(Image.fromarray(halves(0, 1) > 0), "PNG"), (0, 0, 0), (255, 255, 255)),
    }


@pytest.mark.parametrize("case", list(mode_cases()))
def test_every_mode_pillow_reads_decodes_to_the_rgb_a_viewer_shows(decoder: Decoder, case: str) -> None:
    data, left, right = mode_cases()[case]
    region, width, height = decoded(decoder, data)
    assert (width, height) == (W, H)
    assert_halves(region, left, right)


def test_a_16_bit_png_decodes_like_its_8_bit_twin(decoder: Decoder) -> None:
    """Not all white: the same picture as the 8-bit file of the same values."""
    ramp = np.tile(np.linspace(0, 1, W), (H, 1))
    sixteen = encode(Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)), "PNG")
    eight = encode(Image.fromarray(np.rint(ramp * 255).astype(np.uint8)), "PNG")
    a, _, _ = decoded(decoder, sixteen)
    b, _, _ = decoded(decoder, eight)
    assert np.abs(a - b).max() <= 2 and a.min() < 10 and a.max() > 245


def marked(width: int, height: int) -> Image.Image:
    """A picture whose every flip and turn looks different: red top-left corner, blue bottom edge."""
    img = Image.new("RGB", (width, height), (128, 128, 128))
    img.paste((220, 20, 20), (0, 0, width // 4, height // 4))
    img.paste((20, 20, 220), (0, height - height // 8, width, height))
    return img


INVERSE = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def stored_for(shown: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera would store for ``shown`` with this orientation tag."""
    method = INVERSE.get(orientation, ORIENT.get(orientation))
    return shown if method is None else shown.transpose(method)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(decoder: Decoder, orientation: int, fmt: str) -> None:
    shown = marked(W, H)
    stored = stored_for(shown, orientation)
    assert orient(stored, orientation).tobytes() == shown.tobytes()  # the test's own inverse is right
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    header = check_header(data, LIMITS)
    assert (header.width, header.height, header.orientation) == (W, H, orientation)
    region, width, height = decoded(decoder, data)
    assert (width, height) == (W, H)
    expected = np.asarray(shown.resize((region.shape[1], region.shape[0]), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(region - expected).mean() < 8, f"orientation {orientation} not applied ({fmt}, {decoder.name})"


def test_orient_chw_matches_pillow_for_every_orientation() -> None:
    """The nvJPEG path's transform, on CPU tensors: the same pixels as Pillow's transposes."""
    from visionpipe.services.decode.backends import orient_chw

    img = marked(6, 4)
    img.putpixel((5, 0), (1, 2, 3))
    chw = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    for orientation in range(1, 9):
        want = np.asarray(orient(img, orientation))
        got = orient_chw(chw, orientation).permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), orientation
