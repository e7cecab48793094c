"""The lag KEDA's Kafka scaler acts on is the lag the stages really have.

KEDA reads a stage's lag as Kafka reports it for the group ``<topic>.<stage>`` (the ScaledObjects in
deploy/k8s/overlays/kafka name it so; tests/deploy checks the names): end offset − committed offset, summed
over partitions, a partition with nothing committed counting from its earliest offset (``offsetResetPolicy:
earliest``). Here Kafka's own tool, ``kafka-consumer-groups`` (``ConsumerGroupCommand``), reads it during a
load whose input is written in transactions (so its partitions hold commit markers, which no stage ever
sees), and it must equal what ``visionpipe`` reports as the stage's backlog. Both count the markers below the end
as well as the messages not yet settled (Kafka's lag is offsets, and a marker takes one): at most one per
partition per upstream transaction, far below any useful ``lagThreshold``. Once everything is settled both
read 0, not a marker per partition.
"""

from __future__ import annotations

import asyncio
import subprocess

from tests.broker.test_contract import take
from tests.kafka.apache import KafkaCluster, java
from visionpipe.broker import Output, Settled, connect
from visionpipe.broker.kafka import kafka_group_id
from visionpipe.settings import Settings

TOOL = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
TRANSACTIONS = 5  # upstream settles, each a transaction over the partitions its outputs went to


def keda_lag(cluster: KafkaCluster, topic: str, group: str) -> int:
    """The group's lag on ``topic`` as ``kafka-consumer-groups --describe`` prints it, read as KEDA reads it."""
    bootstrap = cluster.url.removeprefix("kafka://")
    argv = java(cluster.home, TOOL, "--bootstrap-server", bootstrap, "--describe", "--group", group)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    total, rows = 0, 0
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[1] == topic:  # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
            current, end = cols[3], int(cols[4])
            total += end if current == "-" else end - int(current)
            rows += 1
    assert rows, f"the tool shows no partition of {topic} for {group}:\n{out}"
    return total


async def test_the_lag_keda_reads_is_the_stages_backlog(
    apache_kafka: KafkaCluster, settings: Settings, ns: str
) -> None:
    partitions = settings.broker.kafka_partitions
    txn = settings.model_copy(update={"broker": settings.broker.model_copy(update={"kafka_transactions": True})})
    src, frames = f"{ns}.src", f"{ns}.frames"
    group = kafka_group_id(frames, "decode")
    async with await connect(apache_kafka.url, txn) as upstream, await connect(apache_kafka.url, txn) as stage:
        await upstream.ensure(src, "ingest")
        await upstream.ensure(frames, "decode")
        await upstream.publish(src, [b"%d" % i for i in range(40)], [str(i) for i in range(40)])
        got = await take(upstream, src, "ingest", "u", 40)  # written to frames in transactions, as a stage does
        for i in range(0, 40, 40 // TRANSACTIONS):
            batch = got[i : i + 40 // TRANSACTIONS]
            await upstream.settle(src, "ingest", [Settled(d, (Output(frames, d.data, d.key),)) for d in batch])
        held = await take(stage, frames, "decode", "decode-1", 25)
        await stage.settle(frames, "decode", [Settled(d) for d in held[:15]])  # 15 done, 10 in hand, 15 unread
        await asyncio.sleep(0.5)
        mid = (await stage.backlog(frames, "decode")).total
        tool_mid = await asyncio.to_thread(keda_lag, apache_kafka, frames, group)
        rest = held[15:] + await take(stage, frames, "decode", "decode-1", 15)
        await stage.settle(frames, "decode", [Settled(d) for d in rest])
        for _ in range(10):  # the member commits past the last transaction's marker after its next poll
            await stage.consume(frames, "decode", "decode-1", 10, 0.1)
        end = (await stage.backlog(frames, "decode")).total
        tool_end = await asyncio.to_thread(keda_lag, apache_kafka, frames, group)
    print(
        f"\nlag of {group}: mid-load kafka-consumer-groups {tool_mid}, visionpipe {mid}, messages not settled 25 "
        f"(the rest: commit markers); drained: kafka-consumer-groups {tool_end}, visionpipe {end}"
    )
    assert tool_mid == mid, "visionpipe's backlog is Kafka's lag"
    # Offsets count the upstream transactions' commit markers too: one per partition a transaction wrote to.
    assert 25 <= mid <= 25 + TRANSACTIONS * partitions, mid
    assert tool_end == end == 0, "drained is 0, markers and all"
