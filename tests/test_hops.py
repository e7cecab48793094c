"""Each hop's payload: written by its producer, read back typed by its consumer, refused with a reason when wrong."""

from __future__ import annotations

import numpy as np
import pytest

from visionpipe.envelope import Envelope
from visionpipe.hops import (
    Classified,
    ClassifiedObject,
    DetectedObject,
    Detections,
    EncodedImage,
    HopError,
    Letterboxed,
    TopK,
)

SIZE, CROP = 32, 8


def _wire(env: Envelope) -> Envelope:
    """Through the bytes a broker carries, as the next stage receives it."""
    return Envelope.decode(env.encode())


def _box(label: int = 1) -> DetectedObject:
    return DetectedObject(box=(1.0, 2.0, 30.5, 40.25), score=0.9, label=label, label_name="person")


def test_every_hop_round_trips_through_the_wire() -> None:
    root = EncodedImage(b"\xff\xd8jpeg").write(Envelope("r1", source="s"))
    assert EncodedImage.read(_wire(root)).image == b"\xff\xd8jpeg"

    image = np.arange(SIZE * SIZE * 3, dtype=np.uint8).reshape(SIZE, SIZE, 3)
    tensors = Letterboxed(image, 64, 48, (0.5, 0.5), (0.0, 4.0), "cpu").write(root)
    got = Letterboxed.read(_wire(tensors), SIZE)
    assert (got.width, got.height, got.scale, got.pad, got.decoder) == (64, 48, (0.5, 0.5), (0.0, 4.0), "cpu")
    assert np.array_equal(got.image, image) and tensors.request_id == "r1"

    crops = np.zeros((2, 3, CROP, CROP), dtype=np.uint8)
    found = Detections(64, 48, [_box(1), _box(2)], crops, {"detector": "nanodet"}).write(tensors)
    det = Detections.read(_wire(found), CROP)
    assert [o.label for o in det.objects] == [1, 2] and det.crops.shape == (2, 3, CROP, CROP)
    assert det.weights == {"detector": "nanodet"}

    top = [TopK(label=281, name="tabby", score=0.7)]
    objects = [ClassifiedObject(**o.model_dump(), top_k=top) for o in det.objects]
    result = Classified(64, 48, objects, {**det.weights, "classifier": "lite0"}).write(found)
    assert result.payload["objects"][0] == {
        "box": [1.0, 2.0, 30.5, 40.25],
        "score": 0.9,
        "label": 1,
        "label_name": "person",
        "top_k": [{"label": 281, "name": "tabby", "score": 0.7}],
    }
    assert Classified.read(_wire(result)).objects[1].top_k[0].name == "tabby"


@pytest.mark.parametrize(
    ("payload", "arrays", "reason"),
    [
        ({"width": 64, "height": 48, "scale": [1, 1], "pad": [0, 0]}, {}, "needs a uint8 array 'image'"),
        (
            {"width": 64, "height": 48, "scale": [1, 1], "pad": [0, 0]},
            {"image": np.zeros((SIZE, SIZE), np.uint8)},
            r"got uint8\[32, 32\]",
        ),
        ({"width": 64, "scale": [1, 1], "pad": [0, 0]}, None, "lacks letterbox geometry: height"),
        ({"width": 0, "height": 48, "scale": [1, 1], "pad": [0, 0]}, None, "width"),
        ({"width": 64, "height": 48, "scale": [0, 1], "pad": [0, 0]}, None, "zero scale"),
        ({"width": 64, "height": 48, "scale": "wide", "pad": [0, 0]}, None, "scale"),
    ],
)
def test_a_bad_tensors_message_is_refused_with_its_reason(
    payload: dict[str, object], arrays: dict[str, np.ndarray] | None, reason: str
) -> None:
    image = {"image": np.zeros((SIZE, SIZE, 3), np.uint8)} if arrays is None else arrays
    with pytest.raises(HopError, match=reason):
        Letterboxed.read(_wire(Envelope("r", payload=payload, arrays=image)), SIZE)


def test_the_letterbox_crosses_without_its_padding() -> None:
    """A 64x48 image at half scale in a 32² square: 32x24 cross, and the square is rebuilt around them."""
    content = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
    sent = Letterboxed(content, 64, 48, (0.5, 0.5), (0.0, 4.0), "cpu").write(Envelope("r"))
    got = Letterboxed.read(_wire(sent), SIZE)
    square = got.square(SIZE, 114)
    assert got.image.shape == (24, 32, 3) and square.shape == (SIZE, SIZE, 3)
    assert np.array_equal(square[4:28], content) and (square[:4] == 114).all() and (square[28:] == 114).all()
    assert got.square(SIZE, 114) is not got.image and Letterboxed.read(_wire(sent), SIZE).content_shape == (24, 32, 3)
    later = got.square_later(SIZE, 114)  # what the detector submits: drawn when numpy copies it into a batch
    batch = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    batch[1] = later
    assert later.shape == (SIZE, SIZE, 3) and np.array_equal(batch[1], square) and not batch[0].any()
    wrong = Letterboxed(content[:, :31], 64, 48, (0.5, 0.5), (0.0, 4.0)).write(Envelope("r"))
    with pytest.raises(HopError, match=r"the resized image's \[24, 32, 3\]"):
        Letterboxed.read(_wire(wrong), SIZE)
    outside = Letterboxed(content, 64, 48, (0.5, 0.5), (0.0, 12.0)).write(Envelope("r"))
    with pytest.raises(HopError, match="leaves the 32² square"):
        Letterboxed.read(_wire(outside), SIZE)


def test_crops_must_match_the_objects_one_for_one() -> None:
    objects = [_box().model_dump(mode="json")]
    env = Envelope("r", payload={"width": 64, "height": 48, "objects": objects})
    env.arrays["crops"] = np.zeros((2, 3, CROP, CROP), np.uint8)
    with pytest.raises(HopError, match=r"one crop per object.*shape \[1, 3, 8, 8\], got uint8\[2, 3, 8, 8\]"):
        Detections.read(_wire(env), CROP)
    env.payload["objects"] = [{"box": [1, 2, 3], "score": 1, "label": 0, "label_name": "x"}]
    with pytest.raises(HopError, match=r"objects\.0\.box"):
        Detections.read(_wire(env), CROP)


def test_a_frame_without_bytes_is_refused() -> None:
    with pytest.raises(HopError, match="no image bytes"):
        EncodedImage.read(Envelope("r", payload={"image": "text"}))
