"""peek and the dead-letter tools, on real brokers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.broker.conftest import client_url
from tests.broker.test_contract import take
from visionpipe.broker import Broker, DeadLetter, Output, Settled, connect
from visionpipe.broker.dlq import list_dead, replay_dead
from visionpipe.collector import Collector
from visionpipe.settings import load_settings


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
    assert len((await replay_dead(broker, dead, 10)).moved) == 2
    back = await take(broker, origin, "decode", "c", 2)
    assert [d.data for d in back] == [b"img1", b"img2"] and {d.key for d in back} == {"r1"}
    again = await replay_dead(broker, dead, 10, timeout_s=5.0)
    assert again.moved == [] and again.snapshot == 0, "a replayed entry is not replayed again"


async def fail_again(broker: Broker, origin: str, dead: str, stop: asyncio.Event, failed: list[str]) -> None:
    """A stage whose cause is not fixed: everything sent back to it is dead-lettered again, at once."""
    await broker.ensure(origin, "decode")
    while not stop.is_set():
        for d in await broker.consume(origin, "decode", "c", 16, 0.05):
            await broker.dead_letter(dead, reason="still bad", data=d.data, stage="decode", origin=origin)
            await broker.ack(origin, "decode", [d])
            failed.append(d.id)


async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_a_replay_moves_each_letter_once_while_they_fail_again(broker: Broker, ns: str) -> None:
    dead, origin = f"{ns}.dead", f"{ns}.frames"
    await broker.ensure(dead)
    for i in range(3):
        await broker.dead_letter(dead, reason="bad", data=f"img{i}".encode(), stage="decode", origin=origin)
    stop, failed = asyncio.Event(), []
    stage = asyncio.create_task(fail_again(broker, origin, dead, stop, failed))

    async def failed_again(n: int) -> bool:
        return len(failed) >= n

    try:
        done = await replay_dead(broker, dead, 1000, timeout_s=20.0)
        assert done.snapshot == 3 and len(done.moved) == 3, done.summary(False)
        assert sorted(e.record.data for e in done.moved if e.record) == [b"img0", b"img1", b"img2"]
        await until(lambda: failed_again(3))
        then = await replay_dead(broker, dead, 1000, timeout_s=20.0)  # the three that failed again, once each
        assert then.snapshot == 3 and len(then.moved) == 3
        assert all(e.record and e.record.reason == "still bad" for e in then.moved)
        await until(lambda: failed_again(6))
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await stage
    assert len(failed) == 6  # three letters, each sent back twice: never multiplied
    if done.removed:  # Redis, memory: what was moved left the stream; what failed again is there, once each
        left = await list_dead(broker, dead, 100)
        assert len(left) == 3 and all(e.record and e.record.reason == "still bad" for e in left)


async def test_dry_run_moves_nothing_and_id_moves_only_those_named(broker: Broker, ns: str) -> None:
    dead, origin = f"{ns}.dead", f"{ns}.frames"
    await broker.ensure(dead)
    await broker.ensure(origin, "decode")
    for i in range(3):
        await broker.dead_letter(dead, reason="bad", data=f"img{i}".encode(), stage="decode", origin=origin)
    dry = await replay_dead(broker, dead, 1000, timeout_s=10.0, dry_run=True)
    assert len(dry.moved) == 3 and (await broker.backlog(origin, "decode")).total == 0
    assert "would replay 3 messages" in dry.summary(True)
    chosen = dry.moved[1]
    assert chosen.record is not None
    one = await replay_dead(broker, dead, 1000, timeout_s=10.0, ids=[chosen.id])
    assert [e.id for e in one.moved] == [chosen.id] and one.not_selected == 2
    assert [d.data for d in await take(broker, origin, "decode", "c", 1)] == [chosen.record.data]
    rest = await replay_dead(broker, dead, 1000, timeout_s=10.0)
    others = sorted({b"img0", b"img1", b"img2"} - {chosen.record.data})
    assert sorted(e.record.data for e in rest.moved if e.record) == others


async def test_dead_letters_stay_for_operators_after_a_reader_acks_them(broker_url: str, ns: str) -> None:
    """The gateway reads the dead letters in a group of its own and acks them: they must still be listed, up to the
    retention's count (and bytes, and age), the oldest going first."""
    settings = load_settings(
        streams={"prefix": ns, "dead_letter_max_count": 5, "dead_letter_max_bytes": 40_000},
        broker={"connect_retries": 3, "kafka_session_timeout_ms": 2000, "kafka_heartbeat_ms": 300},
    )
    async with await connect(client_url(broker_url), settings) as broker:
        frames, dead = settings.streams.name("frames"), settings.streams.name("dead_letter")
        await broker.ensure(frames, "decode")
        reader = await Collector(broker, settings, "gateway", "gw").open()

        async def dead_letter(n: int, size: int = 10) -> None:
            await broker.publish(frames, [bytes(size)] * n)
            got = await take(broker, frames, "decode", "c", n)
            letter = DeadLetter(reason="bad", data=bytes(size), stage="decode", origin=frames).encode()
            await broker.settle(frames, "decode", [Settled(d, (Output(dead, letter),)) for d in got])

        await dead_letter(2)
        read = 0
        deadline = time.monotonic() + 20
        while read < 2 and time.monotonic() < deadline:
            read += len((await reader.poll(0.2)).dead)
        assert read == 2, "the reader got and acked both"
        assert len(await list_dead(broker, dead, 100)) == 2, "acked by a reader, still kept for operators"
        if broker_url.startswith("kafka"):
            return  # Kafka keeps them by its topic retention; what follows is the retention of Redis and memory
        await dead_letter(6)
        assert len(await list_dead(broker, dead, 100)) == 5, "no more than the count, the oldest gone first"
        await dead_letter(1, size=30_000)  # two of these would pass the bytes bound
        await dead_letter(1, size=30_000)
        kept = await list_dead(broker, dead, 100)
        assert 1 <= len(kept) < 5 and kept[-1].size > 30_000, [e.size for e in kept]


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
