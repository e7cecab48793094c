"""Replication on three Apache Kafka brokers: topics with replication factor 3 and ``min.insync.replicas`` 2,
written with ``acks=all``, settled in transactions.

* One broker killed (-9) mid-run, the one that coordinates the decode stage's group (so the group's coordinator
  moves while transactions commit offsets to it): its partitions' leadership moves to the others; nothing the
  ingress was told is published is lost, nothing shows twice, and the stages carry on without a restart.
* Two brokers killed: one in-sync replica is left, fewer than ``min.insync.replicas``, so the brokers refuse
  writes (NOT_ENOUGH_REPLICAS): the front door answers Backpressure saying so, the stages keep running (their
  settles wait and retry), and once a broker returns everything goes through, each request once.

Node 0 is the cluster's one controller (tests/kafka/apache.py) and is never killed: with it gone no leader
could be elected, which is a different failure.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kafka.apache import KafkaCluster
from tests.reliability.harness import STANDIN_ENV, Processes, Sink, frames, settings_of, stage_env
from tests.reliability.test_kafka_exactly_once import Feeder, audit, kafka_overrides
from visionpipe import topology
from visionpipe.broker import connect
from visionpipe.broker.kafka import kafka_group_id
from visionpipe.ingress import Backpressure, Frame, ensure_pipeline_streams, submit_images
from visionpipe.settings import Settings
from visionpipe.topology import DECODE, STAGES

# A refused write is retried by the producer until it times out; short here so the refusal shows in seconds.
MESSAGE_TIMEOUT_MS = 6000
RUN_AFTER_KILL_S = 8.0


@pytest.fixture
def cluster(apache_kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """The session's three brokers, every one of them running again after the test."""
    yield apache_kafka_cluster
    for i, node in enumerate(apache_kafka_cluster.nodes):
        if node.proc is None or node.proc.poll() is not None:
            apache_kafka_cluster.start(i)


def replicated(ns: str, cluster: KafkaCluster) -> dict[str, Any]:
    url = f"{cluster.url}?producer.message.timeout.ms={MESSAGE_TIMEOUT_MS}"
    return kafka_overrides(ns, url, kafka_replication_factor=3, kafka_min_insync_replicas=2)


def _decode_coordinated_by_a_broker_we_may_kill(cluster: KafkaCluster) -> tuple[str, int]:
    """A namespace whose decode group's coordinator is node 1 or 2 (node 0, the controller, stays), and that node.

    The coordinator is where a group's offsets are committed, inside each settle's transaction: a broker
    holding it dies and the group, its members and their transactional producers must all find the new one.
    """
    for _ in range(50):  # each node coordinates about a third of the groups
        ns = f"kr1{uuid.uuid4().hex[:8]}"
        s = settings_of(replicated(ns, cluster))
        node = cluster.coordinator(kafka_group_id(topology.input_stream(DECODE, s), topology.group(DECODE, s)))
        if node != 0:
            return ns, node
    raise AssertionError("node 0 coordinates every group name tried")


async def _started(procs: Processes, s: Settings) -> None:
    async with await connect(settings=s) as broker:
        await ensure_pipeline_streams(broker, s)
    for p in [procs.start(stage) for stage in STAGES]:
        await asyncio.to_thread(p.wait_ready)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_broker_killed_mid_run_loses_nothing_acknowledged(cluster: KafkaCluster, tmp_path: Path) -> None:
    ns, victim = await asyncio.to_thread(_decode_coordinated_by_a_broker_we_may_kill, cluster)
    overrides = replicated(ns, cluster)
    s = settings_of(overrides)
    procs = Processes({**stage_env(overrides), **STANDIN_ENV}, tmp_path)
    try:
        await _started(procs, s)
        async with await connect(settings=s) as broker:
            sink = await Sink(broker, s).open()
            feeder = Feeder(broker, s, ns)
            with feeder:
                while len(sink.results) < 20:
                    await sink.poll(0.1)
                cluster.kill(victim)
                t_kill = time.monotonic()
                while time.monotonic() - t_kill < RUN_AFTER_KILL_S:
                    await sink.poll(0.1)
                await feeder.stop()
            figures = await audit(cluster.url, s, feeder.sent, {}, sink, frozenset(feeder.unsure))
            procs.assert_alive()
    finally:
        procs.close()
    print(
        f"\none of three Apache Kafka {cluster.version} brokers killed mid-run (RF 3, min ISR 2), node {victim}, "
        f"decode's group coordinator: {figures}"
    )
    assert figures["lost"] == figures["doubled"] == figures["good dead-lettered"] == 0, figures


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_brokers_killed_refuse_writes_as_backpressure_until_one_returns(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    ns = f"kr2{uuid.uuid4().hex[:8]}"
    overrides = replicated(ns, cluster)
    s = settings_of(overrides)
    procs = Processes({**stage_env(overrides), **STANDIN_ENV}, tmp_path)
    try:
        await _started(procs, s)
        async with await connect(settings=s) as broker:
            sink = await Sink(broker, s).open()
            sent = await submit_images(broker, s, [Frame(f, request_id=f"{ns}-a{i}") for i, f in enumerate(frames(6))])
            await sink.results_for(set(sent), timeout_s=60)
            cluster.kill(1)
            cluster.kill(2)
            t_kill = time.monotonic()
            refused, tried = None, []
            while refused is None and time.monotonic() - t_kill < 60:
                tried.append(f"{ns}-b{len(tried)}")
                try:
                    sent += await submit_images(broker, s, [Frame(frames(1, seed=9)[0], request_id=tried[-1])], 0)
                except Backpressure as exc:
                    refused = str(exc)
            refused_after = time.monotonic() - t_kill
            assert refused is not None and "NOT_ENOUGH_REPLICAS" in refused, refused
            procs.assert_alive()
            cluster.start(1)
            t_back = time.monotonic()
            late = [Frame(f, request_id=f"{ns}-c{i}") for i, f in enumerate(frames(6, seed=3))]
            sent += await submit_images(broker, s, late, wait_s=120)
            accepted_after = time.monotonic() - t_back
            figures = await audit(cluster.url, s, sent, {}, sink, frozenset(tried) - set(sent))
            procs.assert_alive()
    finally:
        procs.close()
    print(
        f"\ntwo of three Apache Kafka {cluster.version} brokers killed: Backpressure after {refused_after:.1f}s "
        f"({refused[:160]}...); a broker back, writes accepted {accepted_after:.1f}s later; stages never "
        f"restarted; {figures}"
    )
    assert figures["lost"] == figures["doubled"] == figures["good dead-lettered"] == 0, figures
