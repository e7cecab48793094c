"""The broker contract, run unchanged against memory, Redis (redis-server), Tansu and Apache Kafka.

Every test takes ``broker`` (parametrized over the four backends by ``broker_url``)
and a fresh namespace ``ns``, so tests never see each other's messages.

Tansu, a Kafka-protocol broker that starts in milliseconds, stays to show the protocol is all we rely on; it
passes every case here, but only with these limits, which Apache Kafka does not have:

* its end offset is the last record *batch*'s base offset + 1, so backlog is exact only with one record per
  batch (``producer.batch.num.messages=1``, added by ``client_url``);
* it creates a topic on the first produce to it, so a missing ``ensure`` goes unnoticed (the test Apache Kafka
  refuses: ``auto.create.topics.enable=false``), and a topic is readable at once (on Apache Kafka a new
  topic's partitions answer NOT_LEADER for a moment: ``ensure`` waits for their leaders);
* it drops commit metadata, and it recovers no killed transactional producer, so the transactions and
  exactly-once tests run on Apache Kafka only (tests/reliability/test_kafka_exactly_once.py);
* a join's rebalance there never refused a member's commit; on Apache Kafka the second member's join bumps
  the generation and the first member's commits are refused until it rejoins (``test_two_members_share_a_group``).
"""

from __future__ import annotations

import asyncio
import time

from tests.broker.conftest import client_url
from visionpipe.broker import Broker, DeadLetter, Delivery, Output, Settled, connect
from visionpipe.settings import Settings

# Kafka's first consume joins the group, which Tansu answers in ~1 s with our test session timeout.
JOIN_S = 15.0


async def take(
    broker: Broker, stream: str, group: str, consumer: str, n: int, within_s: float = JOIN_S
) -> list[Delivery]:
    """Consume until ``n`` deliveries arrived or ``within_s`` passed (a Kafka join takes a while)."""
    out: list[Delivery] = []
    deadline = time.monotonic() + within_s
    while len(out) < n and time.monotonic() < deadline:
        out += await broker.consume(stream, group, consumer, n - len(out), 0.2)
    return out


async def test_round_trip_keeps_bytes_keys_and_per_key_order(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    msgs = [f"m{i}".encode() + bytes(range(256)) for i in range(12)]
    keys = ["a" if i % 2 else "b" for i in range(12)]
    await broker.publish(stream, msgs, keys)
    got = await take(broker, stream, "g", "c1", 12)
    assert sorted(d.data for d in got) == sorted(msgs)
    assert {d.data: d.key for d in got} == dict(zip(msgs, keys, strict=True))
    for key in ("a", "b"):
        assert [d.data for d in got if d.key == key] == [m for m, k in zip(msgs, keys, strict=True) if k == key]
    assert all(d.stream == stream and d.attempts >= 1 for d in got)
    await broker.ack(stream, "g", got)


async def test_unkeyed_messages_have_no_key(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"x", b"y"])
    got = await take(broker, stream, "g", "c1", 2)
    assert sorted(d.data for d in got) == [b"x", b"y"] and {d.key for d in got} == {None}


async def test_backlog_counts_pending_until_ack(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    assert (await broker.backlog(stream, "g")).total == 0
    await broker.publish(stream, [b"%d" % i for i in range(5)], ["k"] * 5)
    assert (await broker.backlog(stream, "g")).total == 5
    got = await take(broker, stream, "g", "c1", 2)
    assert len(got) == 2
    assert (await broker.backlog(stream, "g")).total == 5, "delivered but unacked entries are still backlog"
    await broker.ack(stream, "g", got)
    assert (await broker.backlog(stream, "g")).total == 5 - len(got)
    rest = await take(broker, stream, "g", "c1", 5 - len(got))
    await broker.ack(stream, "g", rest)
    assert (await broker.backlog(stream, "g")).total == 0


async def test_groups_each_get_every_message(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g1")
    await broker.ensure(stream, "g2")
    await broker.publish(stream, [b"a", b"b", b"c"])
    one = await take(broker, stream, "g1", "c", 3)
    await broker.ack(stream, "g1", one)
    two = await take(broker, stream, "g2", "c", 3)
    assert sorted(d.data for d in one) == sorted(d.data for d in two) == [b"a", b"b", b"c"]
    assert (await broker.backlog(stream, "g1")).total == 0
    assert (await broker.backlog(stream, "g2")).total == 3


async def test_consume_times_out_empty_and_wakes_on_publish(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"warm"])
    assert len(await take(broker, stream, "g", "c", 1)) == 1  # on Kafka, waits out the group join
    t0 = time.monotonic()
    assert await broker.consume(stream, "g", "c", 10, 0.3) == []
    assert 0.2 <= time.monotonic() - t0 < 2.0

    async def later() -> None:
        await asyncio.sleep(0.2)
        await broker.publish(stream, [b"late"])

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    got = await broker.consume(stream, "g", "c", 10, 5.0)
    waited = time.monotonic() - t0
    await task
    assert [d.data for d in got] == [b"late"]
    assert waited < 2.0, "a blocked consume must return when a message arrives, not at its timeout"


async def test_two_members_share_a_group(broker: Broker, ns: str, settings: Settings, broker_url: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    async with await connect(client_url(broker_url), settings) as other:
        await broker.publish(stream, [b"%d" % i for i in range(40)], [str(i) for i in range(40)])
        seen: list[bytes] = []
        deadline = time.monotonic() + JOIN_S
        while len(seen) < 40 and time.monotonic() < deadline:
            for b, name in ((broker, "c1"), (other, "c2")):
                got = await b.consume(stream, "g", name, 5, 0.1)
                seen += [d.data for d in got]
                await b.ack(stream, "g", got)
        # On Kafka the second member's join rebalances the group, and a commit made meanwhile is refused until
        # its member has rejoined (at its next poll): members that go on polling, as stages do, make it then.
        while (await broker.backlog(stream, "g")).total and time.monotonic() < deadline:
            for b, name in ((broker, "c1"), (other, "c2")):
                got = await b.consume(stream, "g", name, 5, 0.1)
                seen += [d.data for d in got]
                await b.ack(stream, "g", got)
        assert sorted(seen) == sorted(b"%d" % i for i in range(40))
        assert len(seen) == len(set(seen)), "an acked message must not be delivered twice"
        assert (await broker.backlog(stream, "g")).total == 0


async def test_deliveries_of_a_dead_member_are_taken_over(
    broker: Broker, ns: str, settings: Settings, broker_url: str
) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"a", b"b", b"c"], ["k"] * 3)
    dead = await connect(client_url(broker_url), settings)
    held = await take(dead, stream, "g", "dead", 3)
    assert len(held) == 3
    await dead.close()  # dies without acking
    recovered: list[Delivery] = []
    deadline = time.monotonic() + JOIN_S
    while len(recovered) < 3 and time.monotonic() < deadline:
        recovered += await broker.reclaim(stream, "g", "alive", min_idle_s=0.3, count=10)
        recovered += await broker.consume(stream, "g", "alive", 10, 0.1)
    assert sorted(d.data for d in recovered) == [b"a", b"b", b"c"]
    if broker.tracks_attempts:
        assert all(d.attempts == 2 for d in recovered), [d.attempts for d in recovered]
    await broker.ack(stream, "g", recovered)
    assert (await broker.backlog(stream, "g")).total == 0


async def test_reclaim_leaves_fresh_deliveries_alone(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"a"])
    assert len(await take(broker, stream, "g", "c1", 1)) == 1
    assert await broker.reclaim(stream, "g", "c2", min_idle_s=60.0, count=10) == []


async def test_dead_letter_keeps_reason_and_bytes(broker: Broker, ns: str) -> None:
    dlq = f"{ns}.dead"
    await broker.ensure(dlq, "inspect")
    await broker.dead_letter(
        dlq, reason="truncated JPEG", data=b"\xff\xd8oops", stage="decode", origin="vp.frames", request_id="r1"
    )
    got = await take(broker, dlq, "inspect", "c", 1)
    record = DeadLetter.decode(got[0].data)
    assert (record.reason, record.data, record.stage, record.origin, record.request_id) == (
        "truncated JPEG",
        b"\xff\xd8oops",
        "decode",
        "vp.frames",
        "r1",
    )
    assert got[0].key == "r1"


async def test_large_message_round_trips(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    blob = bytes(range(256)) * (640 * 640 * 3 // 256)  # one 640x640 RGB uint8 tensor, 1.2 MB
    await broker.publish(stream, [blob, blob[:10]])
    got = await take(broker, stream, "g", "c", 2)
    assert sorted(len(d.data) for d in got) == [10, len(blob)]
    assert max(got, key=lambda d: len(d.data)).data == blob


async def test_delete_forgets_the_stream(broker: Broker, ns: str) -> None:
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"a", b"b"])
    assert await broker.length(stream) == 2
    await broker.delete(stream)
    await broker.ensure(stream, "g")
    assert await broker.length(stream) == 0
    assert (await broker.backlog(stream, "g")).total == 0


async def test_publish_nothing_and_ping(broker: Broker, ns: str) -> None:
    await broker.ensure(f"{ns}.s", "g")
    await broker.publish(f"{ns}.s", [])
    assert (await broker.backlog(f"{ns}.s", "g")).total == 0
    assert await broker.ping()


async def test_unacked_delivery_of_a_live_member_comes_back(broker: Broker, ns: str) -> None:
    """A stage retries a failed batch by not acking it: reclaim hands it out again, counting attempts."""
    stream = f"{ns}.s"
    await broker.ensure(stream, "g")
    await broker.publish(stream, [b"flaky"])
    first = await take(broker, stream, "g", "c", 1)
    await asyncio.sleep(0.3)
    again = await broker.reclaim(stream, "g", "c", min_idle_s=0.2, count=10)
    assert [(d.data, d.id, d.attempts) for d in again] == [(b"flaky", first[0].id, 2)]
    assert await broker.reclaim(stream, "g", "c", min_idle_s=0.2, count=10) == [], "idle time restarts on hand-out"
    await broker.ack(stream, "g", again)
    assert (await broker.backlog(stream, "g")).total == 0


async def test_settle_publishes_outputs_and_acks_in_one_step(broker: Broker, ns: str) -> None:
    src, out, dead = f"{ns}.in", f"{ns}.out", f"{ns}.dead"
    for stream in (src, out, dead):
        await broker.ensure(stream, "g")
    await broker.publish(src, [b"a", b"b"], ["ka", "kb"])
    got = sorted(await take(broker, src, "g", "c", 2), key=lambda d: d.data)
    settled = [
        Settled(got[0], (Output(out, b"A", "ka"),), f"{ns}.once.a"),
        Settled(got[1], (Output(dead, b"B-dead", "kb"),), f"{ns}.once.b"),
    ]
    assert await broker.settle(src, "g", settled) == 0
    assert (await broker.backlog(src, "g")).total == 0
    assert [(d.data, d.key) for d in await take(broker, out, "g", "c", 1)] == [(b"A", "ka")]
    assert [d.data for d in await take(broker, dead, "g", "c", 1)] == [b"B-dead"]


async def test_settling_a_delivery_again_publishes_nothing(broker: Broker, ns: str) -> None:
    """A retried settle (its reply lost) or a second worker's settle of the same delivery adds no output."""
    src, out = f"{ns}.in", f"{ns}.out"
    await broker.ensure(src, "g")
    await broker.ensure(out, "g")
    await broker.publish(src, [b"a"])
    (got,) = await take(broker, src, "g", "c", 1)
    once = Settled(got, (Output(out, b"A"),), f"{ns}.once.a")
    await broker.settle(src, "g", [once])
    await broker.settle(src, "g", [once])
    assert [d.data for d in await take(broker, out, "g", "c", 2, within_s=3.0)] == [b"A"]
