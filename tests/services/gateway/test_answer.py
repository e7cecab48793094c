"""Judging a stored document as the client's answer: a result read in time but answered past the deadline."""

from __future__ import annotations

import json
import time

import pytest

from visionpipe.services.gateway.answer import judge
from visionpipe.services.gateway.errors import GatewayError

DONE = json.dumps({"status": "done", "request_id": "r", "objects": [], "deadline": {"met": True}}).encode()


def test_a_result_in_time_is_returned_as_it_is() -> None:
    assert judge(DONE, "r", due_ns=time.time_ns() + 10**9) == DONE


def test_a_result_read_in_time_but_answered_after_the_deadline_is_deadline_exceeded_from_the_gateway() -> None:
    with pytest.raises(GatewayError) as caught:
        judge(DONE, "r", due_ns=time.time_ns() - 50 * 10**6)
    err = caught.value
    assert err.status == 504 and err.code == "deadline_exceeded"
    assert err.extra["stage"] == "gateway" and float(err.extra["late_ms"]) >= 50


def test_without_a_client_deadline_nothing_is_judged() -> None:
    assert judge(DONE, "r") == DONE
