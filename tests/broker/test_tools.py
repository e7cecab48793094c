"""peek and the dead-letter tools, on real brokers."""

from __future__ import annotations

from tests.broker.test_contract import take
from visionpipe.broker import Broker
from visionpipe.broker.dlq import list_dead, replay_dead


async def test_peek_reads_without_taking(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"a", b"b", b"c"], ["k"] * 3)
    assert [d.data for d in await broker.peek(stream, 2)] == [b"a", b"b"]
    assert (await broker.backlog(stream, "g")).total == 3
    assert sorted(d.data for d in await take(broker, stream, "g", "c", 3)) == [b"a", b"b", b"c"]


async def test_dlq_list_then_replay_to_origin_once(broker: Broker, ns: str) -> None:
    dead, origin = f"{ns}.dead", f"{ns}.frames"
    await broker.ensure(dead)
    await broker.ensure(origin, "decode")
    await broker.dead_letter(dead, reason="bad", data=b"img1", stage="decode", origin=origin, request_id="r1")
    await broker.dead_letter(dead, reason="worse", data=b"img2", stage="decode", origin=origin, request_id="r1")
    listed = [e.as_dict() for e in await list_dead(broker, dead, 10)]
    assert [(r["reason"], r["request_id"], r["bytes"]) for r in listed] == [("bad", "r1", 4), ("worse", "r1", 4)]
    assert await replay_dead(broker, dead, 10) == 2
    back = await take(broker, origin, "decode", "c", 2)
    assert [d.data for d in back] == [b"img1", b"img2"] and {d.key for d in back} == {"r1"}
    assert await replay_dead(broker, dead, 10, timeout_s=5.0) == 0, "a replayed entry is not replayed again"


async def test_dead_letters_have_a_kind_and_old_records_read_with_one(broker: Broker, ns: str) -> None:
    """bad_input, deadline, gave_up: written with the record; a record from before kinds is given one by its reason."""
    import msgpack

    dead = f"{ns}.dead"
    await broker.ensure(dead)
    await broker.dead_letter(dead, reason="not an image", data=b"a", stage="decode", origin="f", request_id="r1")
    await broker.dead_letter(dead, reason="x", data=b"b", stage="detector", origin="t", request_id="r2", kind="gave_up")
    old = {"reason": "deadline passed 12 ms before detector took it", "data": b"c", "stage": "detector", "origin": "t"}
    await broker.publish(dead, [msgpack.packb({**old, "id": "r3", "at": 1}, use_bin_type=True)], ["r3"])
    rows = [e.as_dict() for e in await list_dead(broker, dead, 10)]  # Kafka: in order within a partition only
    assert sorted((r["request_id"], r["kind"]) for r in rows) == [
        ("r1", "bad_input"),
        ("r2", "gave_up"),
        ("r3", "deadline"),
    ]
