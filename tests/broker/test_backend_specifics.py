"""What only one backend can show: Redis memory freed by acks, Redis restarts, Kafka commit order."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.conftest import client_url
from tests.broker.test_contract import take
from tests.servers import Server, start_redis
from visionpipe.broker import BrokerError, Delivery, Output, Settled, connect
from visionpipe.broker.kafka import KafkaBroker
from visionpipe.settings import Settings


async def test_redis_frees_entries_once_every_group_acked(redis_server: Server, settings: Settings, ns: str) -> None:
    async with await connect(redis_server.url, settings) as broker:
        await broker.ensure(ns, "g1")
        await broker.ensure(ns, "g2")
        await broker.publish(ns, [b"%d" % i for i in range(6)])
        one = await broker.consume(ns, "g1", "c", 6, 1.0)
        await broker.ack(ns, "g1", one[:4])
        assert await broker.length(ns) == 6, "g2 has not read anything yet"
        two = await broker.consume(ns, "g2", "c", 6, 1.0)
        await broker.ack(ns, "g2", two[1:])  # entry 0 stays pending in g2
        await broker.ack(ns, "g1", one[4:])
        assert await broker.length(ns) == 6, "the oldest entry is pending in g2, nothing below it may go"
        await broker.ack(ns, "g2", two[:1])
        assert await broker.length(ns) == 0
        for g in ("g1", "g2"):
            assert (await broker.backlog(ns, g)).total == 0
        await broker.publish(ns, [b"late"])
        assert (await broker.backlog(ns, "g1")).lag == 1, "lag stays exact after trimming"


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[Server]:
    server = start_redis(tmp_path, persistence=True)
    yield server
    server.stop()


async def test_redis_restart_is_retryable_and_loses_nothing(durable_redis: Server, settings: Settings, ns: str) -> None:
    async with await connect(durable_redis.url, settings) as broker:
        await broker.ensure(ns, "g")
        await broker.publish(ns, [b"a", b"b"])
        held = await broker.consume(ns, "g", "c", 1, 1.0)
        durable_redis.stop()
        with pytest.raises(BrokerError):
            await broker.publish(ns, [b"c"])
        assert not await broker.ping()
        durable_redis.start()
        await broker.publish(ns, [b"c"])  # the pool reconnects on its own
        rest = await broker.consume(ns, "g", "c", 10, 1.0)
        assert [d.data for d in held + rest] == [b"a", b"b", b"c"]
        assert (await broker.backlog(ns, "g")).pending == 3, "the pending list survived the restart"


async def test_connect_waits_for_a_late_server(tmp_path: Path, settings: Settings) -> None:
    server = start_redis(tmp_path)
    server.stop()

    async def start_later() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.start)

    try:
        starter = asyncio.create_task(start_later())
        t0 = time.monotonic()
        broker = await connect(
            server.url,
            settings.model_copy(
                update={
                    "broker": settings.broker.model_copy(
                        update={"connect_retries": 100, "connect_backoff_s": 0.05, "connect_backoff_max_s": 0.2}
                    )
                }
            ),
        )
        await starter
        assert await broker.ping() and time.monotonic() - t0 < 10
        await broker.close()
    finally:
        server.stop()


async def test_kafka_ack_out_of_order_never_commits_past_unfinished_work(
    kafka_server: Server, settings: Settings, ns: str
) -> None:
    url = client_url(kafka_server.url)
    async with await connect(url, settings) as broker:
        await broker.ensure(ns, "g")
        await broker.publish(ns, [b"0", b"1", b"2"], ["k"] * 3)
        got = await take(broker, ns, "g", "c", 3)
        assert [d.data for d in got] == [b"0", b"1", b"2"]
        await broker.ack(ns, "g", got[1:])  # 1 and 2 done, 0 still in progress
        assert (await broker.backlog(ns, "g")).total == 3
    async with await connect(url, settings) as restarted:
        again = await take(restarted, ns, "g", "c", 3)
        assert [d.data for d in again] == [b"0", b"1", b"2"], "the commit stayed below the unacked delivery"
        await restarted.ack(ns, "g", again)
        assert (await restarted.backlog(ns, "g")).total == 0


async def test_kafka_cancelled_consume_gives_its_messages_back(
    kafka_server: Server, settings: Settings, ns: str
) -> None:
    async with await connect(client_url(kafka_server.url), settings) as broker:
        assert isinstance(broker, KafkaBroker)
        await broker.ensure(ns, "g")
        await broker.publish(ns, [b"warm"], ["k"])
        await broker.ack(ns, "g", await take(broker, ns, "g", "c", 1))  # waits out the group join
        task = asyncio.create_task(broker.consume(ns, "g", "c", 10, 3.0))
        await asyncio.sleep(0.2)
        task.cancel()  # its poll goes on in a thread and receives what is published next
        with pytest.raises(asyncio.CancelledError):
            await task
        await broker.publish(ns, [b"x"], ["k"])
        got = await take(broker, ns, "g", "c", 1, within_s=5.0)
        assert [d.data for d in got] == [b"x"]
        await broker.ack(ns, "g", got)
        assert (await broker.backlog(ns, "g")).total == 0


# A consumer in its own process: takes `n` deliveries, says so, then waits to be killed.
HOLDER = """
import asyncio, sys
from visionpipe.broker import connect
from visionpipe.settings import load_settings

async def main(url, stream, n):
    broker = await connect(url, load_settings())
    held = 0
    while held < n:
        held += len(await broker.consume(stream, "g", "doomed", n - held, 0.2))
    print("HELD", held, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.parametrize("backend", ["redis", "kafka"])
async def test_killed_consumer_process_loses_nothing(
    backend: str, request: pytest.FixtureRequest, settings: Settings, ns: str
) -> None:
    server: Server = request.getfixturevalue(f"{backend}_server")
    url = client_url(server.url)
    env = {
        **os.environ,
        "VISIONPIPE_BROKER__KAFKA_SESSION_TIMEOUT_MS": str(settings.broker.kafka_session_timeout_ms),
        "VISIONPIPE_BROKER__KAFKA_HEARTBEAT_MS": str(settings.broker.kafka_heartbeat_ms),
    }
    async with await connect(url, settings) as broker:
        await broker.ensure(ns, "g")
        sent = [b"%d" % i for i in range(8)]
        await broker.publish(ns, sent, [str(i % 2) for i in range(8)])
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, ns, "8"], stdout=subprocess.PIPE, env=env)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)  # type: ignore[union-attr]
            assert line.startswith(b"HELD 8")
        finally:
            proc.kill()  # SIGKILL: no leave-group, no ack, no goodbye
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        # The heir works as a stage does, acking what it took: on Kafka, the dead member's partitions come back
        # one message at a time (each counted before it is handed out), the next only once that one is acked.
        recovered: list[Delivery] = []
        deadline = time.monotonic() + 30
        while len(recovered) < 8 and time.monotonic() < deadline:
            got = await broker.reclaim(ns, "g", "heir", min_idle_s=0.5, count=8)
            got += await broker.consume(ns, "g", "heir", 8, 0.2)
            await broker.ack(ns, "g", got)
            recovered += got
        assert sorted(d.data for d in recovered) == sorted(sent)
        assert (await broker.backlog(ns, "g")).total == 0


async def test_kafka_prepare_joins_the_group_in_the_background(
    kafka_server: Server, settings: Settings, ns: str
) -> None:
    async with await connect(client_url(kafka_server.url), settings) as broker:
        await broker.ensure(ns, "g")
        await broker.prepare(ns, "g", "c")
        await asyncio.sleep(settings.broker.kafka_session_timeout_ms / 1000)  # a model loading, say
        await broker.publish(ns, [b"x"])
        t0 = time.monotonic()
        got = await broker.consume(ns, "g", "c", 1, 5.0)
        assert [d.data for d in got] == [b"x"]
        assert time.monotonic() - t0 < 0.5, "the join was already done"


@pytest.mark.parametrize("transactions", [False, True])
async def test_kafka_settle_holds_outputs_until_the_partition_prefix_is_settled(
    kafka_server: Server, settings: Settings, ns: str, transactions: bool
) -> None:
    """An output settled past an unsettled delivery waits: published with the commit that covers it, a crash
    before that commit would have the next owner publish it again. With transactions (happy path only: Tansu
    does not recover a killed producer's transaction, see kafka_txn.py) outputs and commit land as one."""
    s = settings.model_copy(update={"broker": settings.broker.model_copy(update={"kafka_transactions": transactions})})
    src, out = f"{ns}.in", f"{ns}.out"
    async with await connect(client_url(kafka_server.url), s) as broker:
        await broker.ensure(src, "g")
        await broker.ensure(out, "r")
        await broker.publish(src, [b"a", b"b"], ["same", "same"])  # one key: one partition, in order
        first, second = sorted(await take(broker, src, "g", "c", 2), key=lambda d: d.data)
        await broker.settle(src, "g", [Settled(second, (Output(out, b"B"),))])
        assert await broker.consume(out, "r", "reader", 10, 1.0) == [], "B waits for A"
        assert (await broker.backlog(src, "g")).total == 2
        await broker.settle(src, "g", [Settled(first, (Output(out, b"A"),))])
        got = await take(broker, out, "r", "reader", 2)
        assert sorted(d.data for d in got) == [b"A", b"B"]
        assert (await broker.backlog(src, "g")).total == 0
        assert await broker.settle(src, "g", [Settled(first, (Output(out, b"A"),))]) == 1, "settled before"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_tail_reads_the_newest_entries_and_trim_older_keeps_them_short(
    backend: str, redis_server: Server, settings: Settings, ns: str
) -> None:
    url = f"memory://{ns}" if backend == "memory" else redis_server.url
    async with await connect(url, settings) as broker:
        await broker.ensure(ns, "g")
        await broker.publish(ns, [b"%d" % i for i in range(5)])
        assert [d.data for d in await broker.tail(ns, 2)] == [b"3", b"4"]
        assert [d.data for d in await broker.tail(ns, 10)] == [b"%d" % i for i in range(5)]
        assert (await broker.backlog(ns, "g")).total == 5, "tail takes nothing"
        await broker.trim_older(ns, 3600)
        assert await broker.length(ns) == 5
        await asyncio.sleep(0.02)
        await broker.trim_older(ns, 0.01)
        assert await broker.length(ns) == 0


async def test_kafka_tail_reads_each_partition_s_newest_entries(
    kafka_server: Server, settings: Settings, ns: str
) -> None:
    """Kafka keeps its log (retention, not trim_older): tail reads from each partition's end, newest last."""
    async with await connect(client_url(kafka_server.url), settings) as broker:
        await broker.ensure(ns)
        for i in range(6):  # one key: one partition, in order
            await broker.publish(ns, [b"%d" % i], ["k"])
        assert [d.data for d in await broker.tail(ns, 2)] == [b"4", b"5"]
        t0 = time.monotonic()
        assert [d.data for d in await broker.tail(ns, 10)] == [b"%d" % i for i in range(6)]
        assert time.monotonic() - t0 < 2.0, "quick enough to be read every heartbeat"
