"""What the gateway stores for a request: its result, or why it failed, as the JSON document clients read.

Written once when the result is read from the results stream, so every fetch, on any replica, hands out the
same bytes without re-encoding them. The status comes first in every document, so a response can be chosen
from the first bytes: ``done`` (a result; with a ``deadline`` section when the request had one, saying whether
it was met, judged on this gateway's clock — the one that set it), ``expired`` (a stage answered
``deadline_exceeded``: which one, and how late it would have been) or ``failed`` (a dead letter, with its kind).
"""

from __future__ import annotations

import json
import math
from typing import Any

from visionpipe.breakdown import categories_ms, segments
from visionpipe.broker import DeadLetter
from visionpipe.broker.base import BAD_INPUT
from visionpipe.envelope import Envelope, Event
from visionpipe.hops import Expiry
from visionpipe.topology import DECODE, INGRESS, STAGES

# The gateway stamps when a request reached it, so the split's "ingress wait" is the gateway's own admission.
RECEIVED = "received"
DONE_PREFIX = b'{"status": "done"'
DEADLINE_KEY = b'"deadline": {'  # in a done document only when the request had a deadline
# A deadline this close to the result TTL is the TTL the gateway set itself (between receipt and publish).
TTL_SLACK_NS = 1_000_000_000


def result_document(env: Envelope, read_wall_ns: int, ttl_s: float = math.inf) -> bytes:
    """A finished request: the boxes in original pixels with their top-k, and where its time went.

    ``ttl_s``: the gateway's result TTL, the deadline it gives a request that brought none (past it nobody can
    fetch the result); such a deadline is the gateway's, not the client's, and gets no ``deadline`` section.
    """
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
    if env.deadline_ns is not None and start is not None and env.deadline_ns - start < ttl_s * 1e9 - TTL_SLACK_NS:
        doc["deadline"] = deadline_section(env, read_wall_ns)
    return json.dumps(doc).encode()


def deadline_section(env: Envelope, read_wall_ns: int) -> dict[str, Any]:
    """Whether a result came in time (read here by then), and if not, the first stage that published it late."""
    assert env.deadline_ns is not None
    late_ns = read_wall_ns - env.deadline_ns
    section: dict[str, Any] = {"met": late_ns <= 0, "late_ms": round(max(late_ns, 0) / 1e6, 3)}
    if late_ns > 0:
        published = [(s, env.ts(s, Event.PUBLISHED)) for s in STAGES]
        section["stage"] = next((s for s, t in published if t is not None and t > env.deadline_ns), "gateway")
    return section


def expired_document(env: Envelope, expiry: Expiry) -> bytes:
    """A request a stage answered deadline_exceeded: which stage, how late it would have been, and why."""
    doc = {
        "status": "expired",
        "request_id": env.request_id,
        "stage": expiry.stage,
        "late_ms": round(expiry.late_ms, 3),
        "why": expiry.why,
        "reason": expiry.reason(),
    }
    return json.dumps(doc).encode()


def failure_document(letter: DeadLetter) -> bytes:
    """A dead letter: its kind; decode's refusals of input are the client's to fix, the rest the pipeline's."""
    doc = {
        "status": "failed",
        "request_id": letter.request_id,
        "stage": letter.stage,
        "reason": letter.reason,
        "kind": letter.kind,
        "bad_input": letter.kind == BAD_INPUT and letter.stage == DECODE,
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
