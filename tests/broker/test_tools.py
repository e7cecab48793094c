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
