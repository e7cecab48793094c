"""Property: whatever the interleaving of submit, retry, complete, expire and resubmit-with-another-image, the
results store never hands anyone a result computed from an image other than the one they asked about.

The machine drives the gateway's own admission (``admit_request``) and the results backends (memory, with a clock
the test moves; Redis, real, with expiry done by deleting the key that would have expired), and plays the
pipeline itself: each admitted submission is a computation that completes, with a document naming its image,
whenever the machine chooses — before or after any expiry, in any order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.servers import Server
from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.service import admit_request, fingerprint
from visionpipe.services.gateway.store import Claim, Finished, MemoryResults, ResultsBackend
from visionpipe.services.gateway.store.redis_backend import RedisResults
from visionpipe.settings import load_settings

T = TypeVar("T")
IDS = st.sampled_from(["r0", "r1"])
IMAGES = st.sampled_from([b"image-a", b"image-b", b"image-c"])
TTL_S = 10.0


class Clients(RuleBasedStateMachine):
    """Subclasses give the backend and how time passes."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.results: ResultsBackend = self.run(self.open())
        self.next_submission = 1
        self.image_of: dict[int, bytes] = {}  # submission -> the image it was computed from
        self.inflight: list[tuple[str, int]] = []  # admitted, not yet completed (in the pipeline)
        self.asking: list[tuple[str, Claim, bytes]] = []  # clients waiting: id, the claim answering them, their image
        self.answered = 0

    async def open(self) -> ResultsBackend:
        raise NotImplementedError

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.results.close())
        self.loop.close()

    @rule(rid=IDS, image=IMAGES)
    def submit(self, rid: str, image: bytes) -> None:
        """A client's upload with its own id: new, a retry of the same image, or another image under that id."""
        mine = Claim(fingerprint(image), self.next_submission)
        self.next_submission += 1
        try:
            held = self.run(admit_request(self.results, rid, mine, TTL_S))
        except GatewayError as exc:
            assert exc.status == 409
            return
        if held is None:
            self.image_of[mine.submission] = image
            self.inflight.append((rid, mine.submission))
            self.asking.append((rid, mine, image))
        else:
            assert held.fingerprint == mine.fingerprint  # a retry waits for the first attempt, of the same image
            self.asking.append((rid, held, image))

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        """The pipeline finishes one admitted submission, whenever it does."""
        if not self.inflight:
            return
        rid, submission = self.inflight.pop(data.draw(st.integers(0, len(self.inflight) - 1)))
        doc = json.dumps({"image": self.image_of[submission].decode()}).encode()
        self.run(self.results.store([Finished(rid, submission, doc)], TTL_S))

    @rule(data=st.data())
    def client_asks(self, data: st.DataObject) -> None:
        """A waiting client looks for its result (what POST /v1/detect's wait does)."""
        if not self.asking:
            return
        rid, claim, image = self.asking[data.draw(st.integers(0, len(self.asking) - 1))]
        doc = self.run(self.results.get(rid, claim.submission))
        self._check(doc, image)

    @rule(rid=IDS)
    def get_by_id(self, rid: str) -> None:
        """GET /v1/results/{id}: the result of whichever submission holds the id now."""
        claim = self.run(self.results.claimed(rid))
        if claim is None:
            return
        doc = self.run(self.results.get(rid, claim.submission))
        if doc is not None:
            image = self.image_of[claim.submission]
            self._check(doc, image)
            assert claim.fingerprint in ("", fingerprint(image))

    def _check(self, doc: bytes | None, image: bytes) -> None:
        if doc is not None:
            self.answered += 1
            assert json.loads(doc)["image"] == image.decode(), "a result computed from another image"

    @invariant()
    def no_claim_names_another_image(self) -> None:
        for rid in ("r0", "r1"):
            claim = self.run(self.results.claimed(rid))
            if claim is not None and claim.fingerprint and claim.submission in self.image_of:
                assert claim.fingerprint == fingerprint(self.image_of[claim.submission])


class MemoryClients(Clients):
    async def open(self) -> ResultsBackend:
        self.now = 0.0
        return MemoryResults(100, clock=lambda: self.now)

    @rule(dt=st.floats(0.0, 1.5 * TTL_S))
    def time_passes(self, dt: float) -> None:
        self.now += dt


class RedisClients(Clients):
    url = ""
    prefix = ""

    async def open(self) -> ResultsBackend:
        settings_ = load_settings(streams={"prefix": self.prefix})
        self.admin = redis.Redis.from_url(self.url)
        self.admin.delete(*[f"{self.prefix}:{k}:{r}" for k in ("req", "result") for r in ("r0", "r1")])
        return await RedisResults.connect(self.url, settings_)

    @rule(rid=IDS, kind=st.sampled_from(["req", "result"]))
    def expires(self, rid: str, kind: str) -> None:
        """A claim or a result reaches its expiry (each has its own; which comes first depends on the timing)."""
        self.admin.delete(f"{self.prefix}:{kind}:{rid}")

    def teardown(self) -> None:
        super().teardown()
        self.admin.close()


PROPERTY = settings(
    max_examples=150, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_no_interleaving_returns_another_images_result_memory() -> None:
    run_state_machine_as_test(MemoryClients, settings=PROPERTY)


def test_no_interleaving_returns_another_images_result_redis(redis_server: Server, ns: str) -> None:
    class Machine(RedisClients):
        url, prefix = redis_server.url, ns

    run_state_machine_as_test(Machine, settings=settings(PROPERTY, max_examples=40))


def test_the_machine_reaches_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property would be empty if no run ever handed out a result: count them over a fixed run."""
    answered: list[int] = []
    original = Clients.teardown

    def counting(self: Any) -> None:
        answered.append(self.answered)
        original(self)

    monkeypatch.setattr(MemoryClients, "teardown", counting)
    run_state_machine_as_test(MemoryClients, settings=settings(PROPERTY, max_examples=30, derandomize=True))
    assert sum(answered) > 0
