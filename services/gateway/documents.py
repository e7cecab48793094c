"""What the gateway stores for a request: its result, or why it failed, as the JSON document clients read.

Written once when the result is read from the results stream, so every fetch, on any replica, hands out the
same bytes without re-encoding them. The status comes first in every document, so a response can be chosen
from the first bytes.
"""

from __future__ import annotations

import json
from typing import Any

from visionpipe.breakdown import categories_ms, segments
from visionpipe.broker import DeadLetter
from visionpipe.envelope import Envelope, Event
from visionpipe.topology import DECODE, INGRESS

# The gateway stamps when a request reached it, so the split's "ingress wait" is the gateway's own admission.
RECEIVED = "received"
DONE_PREFIX = b'{"status": "done"'


def result_document(env: Envelope, read_wall_ns: int) -> bytes:
    """A finished request: the boxes in original pixels with their top-k, and where its time went."""
    p = env.payload
    start = env.ts(INGRESS, RECEIVED) or env.ts(INGRESS, Event.ENQUEUED)
    parts = segments(env, start, read_wall_ns) if start is not None else {}
    doc = {
        "status": "done",
        "request_id": env.request_id,
        # Width, height and boxes are in the image as displayed: decode applied the EXIF orientation it carried.
        "image": {"width": _int(p.get("width")), "height": _int(p.get("height")), "orientation": _orientation(p)},
        "objects": [_object(o) for o in p.get("objects") or [] if isinstance(o, dict)],
        "weights": {str(k): str(v) for k, v in (p.get("weights") or {}).items()},
        "timings_ms": categories_ms(parts),
    }
    return json.dumps(doc).encode()


def failure_document(letter: DeadLetter) -> bytes:
    """A request a stage refused: decode's refusals are the client's input, the rest the pipeline's failure."""
    doc = {
        "status": "failed",
        "request_id": letter.request_id,
        "stage": letter.stage,
        "reason": letter.reason,
        "bad_input": letter.stage == DECODE,
    }
    return json.dumps(doc).encode()


def is_done(doc: bytes) -> bool:
    return doc.startswith(DONE_PREFIX)


def failure(doc: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(doc)
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _orientation(p: dict[str, Any]) -> int:
    value = p.get("orientation", 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _object(o: dict[str, Any]) -> dict[str, Any]:
    return {
        "box": [float(v) for v in (o.get("box") or [0, 0, 0, 0])][:4],
        "score": float(o.get("score") or 0.0),
        "label": _int(o.get("label")),
        "label_name": o.get("label_name"),
        "top_k": [
            {"label": _int(t.get("label")), "name": t.get("name"), "score": float(t.get("score") or 0.0)}
            for t in o.get("top_k") or []
            if isinstance(t, dict)
        ],
    }
