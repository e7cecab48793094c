"""What crosses each hop between stages: one typed payload per stream, written by its producer, read by its consumer.

frames (``EncodedImage``) → decode → tensors (``Letterboxed``) → detector → crops (``Detections``) → classifier →
results (``Classified``). A producer builds the hop and calls :meth:`write` on the envelope it answers; the consumer
calls ``read`` once, at its boundary, and works with typed fields from then on. A message that does not hold the
hop its stream should carry raises :class:`HopError` with a reason a person can act on, which the stage turns into a
dead letter; nothing past the boundary looks a field up by key again.

On the wire each hop stays a msgpack map of plain values plus named arrays, so a reader in another language (or an
older visionpipe) sees the same envelope as before; the types live on both sides of the hop, not in the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from visionpipe.envelope import Envelope


class HopError(ValueError):
    """A message that does not carry its stream's payload: poison for the stage that reads it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DetectedObject(BaseModel):
    """One box of the detector, in the original image's pixels."""

    model_config = ConfigDict(frozen=True)

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    label: int
    label_name: str


class TopK(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: int
    name: str
    score: float


class ClassifiedObject(DetectedObject):
    """A detected box with the classifier's best labels for its crop."""

    top_k: list[TopK] = Field(default_factory=list)


def caption(obj: Mapping[str, Any]) -> str:
    """How a person reads one object of a result: "cat 60% · tabby".

    The detector's label and score first (it found the box, and its 80 classes are what a box is), then the
    classifier's top guess for the crop, which is finer ("tabby") but alone can be wrong in a way a box label
    is not ("envelope" for a laptop). The gateway's page, ``visionpipe run``'s summary and annotated videos
    all say it this way.
    """
    name = obj.get("label_name") or str(obj.get("label", "?"))
    text = f"{name} {float(obj.get('score', 0.0)) * 100:.0f}%"
    top = obj.get("top_k") or []
    return f"{text} · {top[0].get('name') or top[0].get('label')}" if top else text


def _validated(model: type[BaseModel], raw: Any, what: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HopError(f"{what}: {where or 'value'}: {first['msg']}") from None


def _array(env: Envelope, name: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = env.arrays.get(name)
    if arr is None or arr.dtype != np.uint8 or arr.shape != shape:
        got = "none" if arr is None else f"{arr.dtype}{list(arr.shape)}"
        raise HopError(f"{what} needs a uint8 array {name!r} of shape {list(shape)}, got {got}")
    return arr


@dataclass(frozen=True)
class EncodedImage:
    """frames: the image as the client sent it (JPEG, PNG, …), not yet looked at."""

    image: bytes

    def write(self, env: Envelope) -> Envelope:
        env.payload["image"] = self.image
        return env

    @classmethod
    def read(cls, env: Envelope) -> EncodedImage:
        image = env.payload.get("image")
        if not isinstance(image, bytes):
            raise HopError("frame has no image bytes in payload['image']")
        return cls(image)


# The EXIF orientation (1-8) the image file carried, already applied by decode: width, height and every box are in
# the image as it is displayed. 1: stored as displayed, or no EXIF.
MAX_ORIENTATION = 8


class _Geometry(BaseModel):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    scale: tuple[float, float]
    pad: tuple[float, float]
    decoder: str = ""
    orientation: int = Field(1, ge=1, le=MAX_ORIENTATION)


@dataclass(frozen=True)
class Letterboxed:
    """tensors: the decoded image resized to fit a ``size``² square, and where it sits in that square.

    ``x_letterbox = x_original * scale + pad`` per axis, so a box maps back to the original pixels. ``image`` is the
    resized image alone (what the decode stage sends: a 640x480 photo is 0.9 MB rather than the 1.2 MB square,
    and a 16:9 frame 0.7 MB), or the whole square with its padding; :meth:`square` gives the detector the square.
    """

    image: np.ndarray
    width: int
    height: int
    scale: tuple[float, float]
    pad: tuple[float, float]
    decoder: str = ""
    orientation: int = 1  # the EXIF orientation decode applied: width, height and pixels are as displayed

    def write(self, parent: Envelope) -> Envelope:
        geometry = {"width": self.width, "height": self.height, "scale": list(self.scale), "pad": list(self.pad)}
        child = parent.child(**geometry, decoder=self.decoder, orientation=self.orientation)
        child.arrays["image"] = self.image
        return child

    @property
    def content_shape(self) -> tuple[int, int, int]:
        """(height, width, 3) of the resized image inside the square."""
        return _content_shape(self.width, self.height, self.scale)

    def square(self, size: int, pad_value: int) -> np.ndarray:
        """The ``size``² letterbox: the image when it is one, else the resized image placed on ``pad_value`` grey."""
        return np.asarray(self.square_later(size, pad_value))

    def square_later(self, size: int, pad_value: int) -> np.ndarray | Square:
        """:meth:`square`, built only when numpy copies it (``np.asarray``, or assigned into a batch buffer)."""
        if self.image.shape[:2] == (size, size):
            return self.image
        return Square(self.image, size, (int(self.pad[0]), int(self.pad[1])), pad_value)

    @classmethod
    def read(cls, env: Envelope, size: int) -> Letterboxed:
        geo = _validated(_Geometry, env.payload, "detector input lacks letterbox geometry")
        if min(geo.scale) <= 0:
            raise HopError("detector input has a zero scale")
        h, w, _ = content = _content_shape(geo.width, geo.height, geo.scale)
        image = env.arrays.get("image")
        if image is None or image.dtype != np.uint8 or image.shape not in ((size, size, 3), content):
            got = "none" if image is None else f"{image.dtype}{list(image.shape)}"
            want = f"{[size, size, 3]} or the resized image's {list(content)}"
            raise HopError(f"detector needs a uint8 array 'image' of shape {want}, got {got}")
        if min(geo.pad) < 0 or geo.pad[0] + w > size or geo.pad[1] + h > size:
            raise HopError(f"detector input: a {w}x{h} image at {list(geo.pad)} leaves the {size}² square")
        return cls(image, geo.width, geo.height, geo.scale, geo.pad, geo.decoder, geo.orientation)


class Square:
    """A resized image on its letterbox square, drawn when numpy asks for the array (``__array__``).

    The detector hands this to its executor as the item: the square is drawn on the executor's stager thread as
    it fills the batch, not on the event loop that reads the hop. ``shape`` and ``dtype`` are the square's.
    """

    def __init__(self, image: np.ndarray, size: int, pad: tuple[int, int], pad_value: int) -> None:
        self.image, self.pad, self.pad_value = image, pad, pad_value
        self.shape = (size, size, 3)
        self.dtype = np.dtype(np.uint8)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        canvas = np.full(self.shape, self.pad_value, dtype=np.uint8)
        (h, w, _), (px, py) = self.image.shape, self.pad
        canvas[py : py + h, px : px + w] = self.image
        return canvas if dtype is None else canvas.astype(dtype, copy=False)


def _content_shape(width: int, height: int, scale: tuple[float, float]) -> tuple[int, int, int]:
    return round(height * scale[1]), round(width * scale[0]), 3


class _Found(BaseModel):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    objects: list[DetectedObject]
    weights: dict[str, str] = Field(default_factory=dict)
    orientation: int = Field(1, ge=1, le=MAX_ORIENTATION)


@dataclass(frozen=True)
class Detections:
    """crops: the detector's boxes, and one square uint8 CHW crop per box for the classifier."""

    width: int
    height: int
    objects: list[DetectedObject]
    crops: np.ndarray  # (len(objects), 3, C, C)
    weights: dict[str, str] = field(default_factory=dict)
    orientation: int = 1

    def write(self, parent: Envelope) -> Envelope:
        child = parent.child(
            width=self.width,
            height=self.height,
            objects=[o.model_dump(mode="json") for o in self.objects],
            weights=self.weights,
            orientation=self.orientation,
        )
        child.arrays["crops"] = self.crops
        return child

    @classmethod
    def read(cls, env: Envelope, crop: int) -> Detections:
        found = _validated(_Found, env.payload, "classifier input")
        crops = _array(env, "crops", (len(found.objects), 3, crop, crop), "classifier (one crop per object)")
        return cls(found.width, found.height, found.objects, crops, found.weights, found.orientation)


class _Results(BaseModel):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    objects: list[ClassifiedObject]
    weights: dict[str, str] = Field(default_factory=dict)
    orientation: int = Field(1, ge=1, le=MAX_ORIENTATION)


@dataclass(frozen=True)
class Classified:
    """results: every box with its detector label and the classifier's top-k; what clients read."""

    width: int
    height: int
    objects: list[ClassifiedObject]
    weights: dict[str, str] = field(default_factory=dict)
    orientation: int = 1

    def write(self, parent: Envelope) -> Envelope:
        return parent.child(
            width=self.width,
            height=self.height,
            objects=[o.model_dump(mode="json") for o in self.objects],
            weights=self.weights,
            orientation=self.orientation,
        )

    @classmethod
    def read(cls, env: Envelope) -> Classified:
        res = _validated(_Results, env.payload, "result")
        return cls(res.width, res.height, res.objects, res.weights, res.orientation)


EXPIRED = "expired"
# Why a stage answered deadline_exceeded: the deadline had passed when it took the request; what was left of its
# budget (the deadline less what the stages after it expect) was shorter than its fastest answer; or the
# request waited in its device queue until it could no longer be done in time.
WHY_PASSED, WHY_BUDGET, WHY_QUEUE = "passed", "budget", "queue"
WHYS = (WHY_PASSED, WHY_BUDGET, WHY_QUEUE)


class _Expired(BaseModel):
    stage: str = Field(max_length=64)
    late_ms: float
    why: str = Field(max_length=32)


@dataclass(frozen=True)
class Expiry:
    """results: a request answered ``deadline_exceeded`` instead of computed: which stage knew, and by how much.

    ``late_ms`` is how late the request would have been at best (negative: by less than the stage's margin
    for its model's error, which it does not gamble on). It travels on the results stream, where clients read
    answers, not on the dead-letter stream: nothing is wrong with the request, and replaying it is pointless.
    """

    stage: str
    late_ms: float
    why: str

    def write(self, parent: Envelope) -> Envelope:
        return parent.child(**{EXPIRED: {"stage": self.stage, "late_ms": round(self.late_ms, 3), "why": self.why}})

    @classmethod
    def of(cls, env: Envelope) -> Expiry | None:
        """The expiry ``env`` carries; None for a result (or an expiry too damaged to read, left to the reader)."""
        raw = env.payload.get(EXPIRED)
        if raw is None:
            return None
        try:
            e = _Expired.model_validate(raw)
        except ValidationError:
            return cls("unknown", 0.0, "unreadable")
        return cls(e.stage, e.late_ms, e.why)

    def reason(self) -> str:
        if self.why == WHY_PASSED:
            return f"the deadline had passed {self.late_ms:.0f} ms before {self.stage} took the request"
        if self.late_ms <= 0:
            return f"{self.stage} could not finish within the deadline with its safety margin"
        return f"{self.stage}: it would have been {self.late_ms:.0f} ms late ({self.why})"
