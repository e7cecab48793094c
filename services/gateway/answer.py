"""From an admitted submission to the client's answer: wait for its document, and judge it as the API answers it.

Shared by every face of the gateway (``/v1/detect``, the Open Inference Protocol over HTTP and gRPC), so one
request gets the same statuses and reasons whichever way it came: a result, or a :class:`GatewayError`
(422 bad_image, 500 gave_up, 502 pipeline_failed, 504 deadline_exceeded or timeout).
"""

from __future__ import annotations

import time

from visionpipe.broker.base import DEADLINE, GAVE_UP
from visionpipe.services.gateway.documents import DEADLINE_KEY, failure, is_done
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.gateway_metrics import GatewayMetrics
from visionpipe.services.gateway.service import Gateway, Submitted


async def wait_for_document(
    gw: Gateway, sub: Submitted, *, client_id: bool, asked_ms: float | None, received_ns: int, wait_s: float
) -> bytes:
    """The done document of ``sub``, waiting up to ``wait_s`` (or its deadline, if sooner), judged as ``judge``.

    ``client_id``: the client chose the request id (else the gateway claims it before answering a timeout, so a
    later GET of it says "pending").
    """
    rid = sub.request_id
    max_wait_s = gw.settings.gateway.max_wait_s
    left_s = None if asked_ms is None else (received_ns + asked_ms * 1e6 - time.time_ns()) / 1e9
    doc = await gw.wait(rid, sub.claim, min(wait_s if left_s is None else left_s, max_wait_s))
    if doc is None:
        if not client_id:
            await gw.claim(rid, sub.claim)  # now the client has the id: a GET of it must say "pending"
        if asked_ms is not None and left_s is not None and left_s <= min(wait_s, max_wait_s):
            raise no_answer_by_the_deadline(gw, rid, asked_ms)
        raise GatewayError(504, "timeout", f"no result within {wait_s:g} s; it can be fetched later", request_id=rid)
    due_ns = None if asked_ms is None else received_ns + int(asked_ms * 1e6)
    return judge(doc, rid, metrics=gw.metrics, due_ns=due_ns)


def no_answer_by_the_deadline(gw: Gateway, request_id: str, asked_ms: float) -> GatewayError:
    """Nothing came back by the deadline: say so at the deadline (the request may still complete, for a GET)."""
    gw.metrics.deadline.labels("exceeded").inc()
    return GatewayError(
        504,
        "deadline_exceeded",
        f"no answer from the pipeline within the deadline of {asked_ms:g} ms: still queued or computing",
        request_id=request_id,
        extra={"stage": "pipeline", "late_ms": 0.0},
    )


def judge(doc: bytes, request_id: str, *, metrics: GatewayMetrics | None = None, due_ns: int | None = None) -> bytes:
    """A stored document as it is when done; an error when the pipeline refused it, or it came late.

    ``due_ns``: the client's deadline on this gateway's clock (None: it gave none). A result that reached the
    gateway late is answered ``deadline_exceeded`` (still stored, for a later GET), never returned late as if on
    time; the deadline is checked again now, as the answer leaves, so a result read in time but answered after a
    busy spell of the gateway is late all the same.
    """
    judged = due_ns is not None
    if is_done(doc):
        late = failure(doc).get("deadline") if judged and DEADLINE_KEY in doc else None
        past_ms = (time.time_ns() - due_ns) / 1e6 if due_ns is not None else 0.0
        if past_ms > 0 and not (isinstance(late, dict) and not late.get("met", True)):
            late = {"met": False, "stage": "gateway", "late_ms": round(past_ms, 1)}
        if isinstance(late, dict) and not late.get("met", True):
            _count(metrics, "exceeded")
            raise GatewayError(
                504,
                "deadline_exceeded",
                f"the result came {late.get('late_ms')} ms after the deadline; GET /v1/results/{request_id} has it",
                request_id=request_id,
                extra={"stage": str(late.get("stage")), "late_ms": float(late.get("late_ms") or 0.0)},
            )
        _count(metrics, "in_time" if judged else None)
        return doc
    f = failure(doc)
    stage, reason = f.get("stage"), f.get("reason")
    if f.get("status") == "expired":
        _count(metrics, "exceeded")
        late = {"stage": str(stage), "late_ms": float(f.get("late_ms") or 0.0)}
        raise GatewayError(504, "deadline_exceeded", str(reason), request_id=request_id, extra=late)
    if f.get("bad_input"):
        raise GatewayError(422, "bad_image", f"{stage}: {reason}", request_id=request_id)
    kind = f.get("kind")
    if kind == DEADLINE:
        raise GatewayError(
            504, "deadline_exceeded", f"{stage}: {reason}", request_id=request_id, extra={"stage": str(stage)}
        )
    if kind == GAVE_UP:
        raise GatewayError(500, "gave_up", f"{stage}: {reason}", request_id=request_id)
    raise GatewayError(502, "pipeline_failed", f"{stage}: {reason}", request_id=request_id)


def _count(metrics: GatewayMetrics | None, outcome: str | None) -> None:
    if metrics is not None and outcome is not None:
        metrics.deadline.labels(outcome).inc()
