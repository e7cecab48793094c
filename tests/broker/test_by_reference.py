"""The in-process broker carrying objects by reference: the contract suite again, then an envelope's own semantics.

Stages of one process hand the memory broker their output envelopes, not bytes. The contract tests
(``test_contract``, ``test_once``) run here unchanged on a memory broker whose every message is an object:
the test's bytes go in wrapped in one and come out of it, so the store's pending entries, acks, reclaims,
settles and once-keys all work on objects; each delivery must be the reader's own copy of the published one.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from tests.broker import test_contract, test_once
from visionpipe.broker import Broker, DeadLetter, Delivery, MemoryBroker, Output, Payload, Room, Settled
from visionpipe.envelope import COPIED, Envelope, Event

for _module in (test_contract, test_once):
    for _name in dir(_module):
        if _name.startswith("test_") and not _name.startswith("test_a_full_redis"):
            globals()[_name] = getattr(_module, _name)


class Boxed:
    """An in-process message around a contract test's bytes; each reader gets a share of its own."""

    def __init__(self, data: bytes, published: Boxed | None = None) -> None:
        self.data = data
        self.published = published or self

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def share(self) -> Boxed:
        return Boxed(self.data, self.published)

    def encode(self) -> bytes:
        return self.data


def _unwrapped(d: Delivery) -> Delivery:
    assert isinstance(d.data, Boxed) and d.data is not d.data.published, "a delivery is the reader's own share"
    return dataclasses.replace(d, data=d.data.data)


def _boxed(messages: Sequence[Payload]) -> list[Payload]:
    return [Boxed(m) if isinstance(m, bytes) else m for m in messages]


class ObjectsOnMemory(MemoryBroker):
    """The memory broker, with the test's bytes boxed on the way in and unboxed on the way out."""

    async def publish(self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None] | None = None) -> None:
        await super().publish(stream, _boxed(messages), keys)

    async def publish_if_room(
        self, stream: str, messages: Sequence[Payload], keys: Sequence[str | None], room: Room
    ) -> dict[str, int] | None:
        return await super().publish_if_room(stream, _boxed(messages), keys, room)

    async def settle(self, stream: str, group: str, settled: Sequence[Settled]) -> int:
        boxed = [
            dataclasses.replace(s, outputs=tuple(Output(o.stream, _boxed([o.data])[0], o.key) for o in s.outputs))
            for s in settled
        ]
        return await super().settle(stream, group, boxed)

    async def consume(self, stream: str, group: str, consumer: str, count: int, timeout_s: float) -> list[Delivery]:
        return [_unwrapped(d) for d in await super().consume(stream, group, consumer, count, timeout_s)]

    async def reclaim(self, stream: str, group: str, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        return [_unwrapped(d) for d in await super().reclaim(stream, group, consumer, min_idle_s, count)]

    async def peek(self, stream: str, count: int) -> list[Delivery]:
        return [_unwrapped(d) for d in await super().peek(stream, count)]


@pytest.fixture
def broker_url() -> str:
    return f"memory://{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    b = ObjectsOnMemory(broker_url)
    yield b
    await b.close()


@pytest.fixture(autouse=True)
def _second_members_carry_objects_too(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(url: str, settings: object = None) -> Broker:
        return ObjectsOnMemory(url)

    monkeypatch.setattr(test_contract, "connect", connect)


def _frame(request_id: str = "r1") -> Envelope:
    env = Envelope(request_id, arrays={"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3)})
    env.stamp("decode", Event.PUBLISHED)
    return env


async def test_an_envelope_arrives_by_reference_read_only_and_uncopied() -> None:
    b = MemoryBroker(f"memory://{uuid.uuid4().hex[:8]}")
    await b.ensure("s", "g")
    env = _frame()
    copied = COPIED.bytes
    await b.publish("s", [b.payload(env)], ["r1"])
    (d,) = await b.consume("s", "g", "c", 1, 0.1)
    got = Envelope.decode(d.data)
    assert got is not env and got.request_id == "r1" and got.timestamps == env.timestamps
    assert np.shares_memory(got.arrays["image"], env.arrays["image"]) and not got.arrays["image"].flags.writeable
    assert COPIED.bytes == copied  # nothing encoded, nothing decoded
    got.stamp("detector", Event.DEQUEUED)  # a reader's stamps are its own: a redelivery sees the message as sent
    (again,) = await b.reclaim("s", "g", "c2", 0.0, 1)
    assert "detector" not in Envelope.decode(again.data).timestamps and again.attempts == 2


async def test_objects_count_what_they_hold_and_dead_letter_as_bytes() -> None:
    b = MemoryBroker(f"memory://{uuid.uuid4().hex[:8]}")
    await b.ensure("s", "g")
    env = _frame()
    room = Room(("s",), max_bytes=env.nbytes)
    assert await b.publish_if_room("s", [b.payload(env)], ["r1"], room) is None
    held = await b.publish_if_room("s", [b.payload(_frame("r2"))], ["r2"], room)
    assert held == {"s": env.nbytes}  # the array and the header, as the bound counts it
    (d,) = await b.consume("s", "g", "c", 1, 0.1)
    await b.dead_letter("dead", reason="bad", data=d.data, stage="detector", origin="s", request_id="r1")
    await b.ensure("dead", "g")
    (dead,) = await b.consume("dead", "g", "c", 1, 0.1)
    assert isinstance(dead.data, bytes)
    record = DeadLetter.decode(dead.data)
    back = Envelope.decode(record.data)
    assert back.request_id == "r1" and np.array_equal(back.arrays["image"], env.arrays["image"])


async def test_servers_are_handed_bytes() -> None:
    """Only the in-process broker is given objects: for every other, a producer's envelope is encoded."""

    class Server(MemoryBroker):
        by_reference = False

    env = _frame()
    assert isinstance(MemoryBroker("memory://x").payload(env), Envelope)
    assert Server("memory://y").payload(env) == env.encode()
