"""Finding and sampling the broker process: the numbers behind the report's Resources table."""

from __future__ import annotations

import asyncio

import psutil

from tests.kafka.apache import KafkaCluster
from tests.servers import Server
from visionpipe.loadgen.resources import ResourceSampler, broker_process, identify_broker


def test_the_local_broker_is_found_by_its_port(redis_server: Server, kafka_server: Server) -> None:
    for server in (redis_server, kafka_server):
        proc = broker_process(server.url)
        assert proc is not None and server.proc is not None
        assert proc.pid == server.proc.pid


def test_a_remote_or_absent_broker_is_not_guessed() -> None:
    assert broker_process("redis://redis.example.com:6379/0") is None
    assert broker_process("kafka://10.1.2.3:9092,10.1.2.4:9092") is None
    assert broker_process("redis://127.0.0.1:1/0") is None  # nothing listens on port 1


async def test_the_sampler_reports_cpu_and_peak_memory_of_a_busy_process() -> None:
    busy = psutil.Process()  # this test process, kept busy for the window
    loop = asyncio.get_running_loop()
    before, t0 = busy.cpu_times(), loop.time()
    async with ResourceSampler({"self": busy}) as sampler:
        while loop.time() < t0 + 0.6:
            sum(i * i for i in range(20_000))
            await asyncio.sleep(0)
    after, wall = busy.cpu_times(), loop.time() - t0
    # What the spin really got of a core on this (shared) host, measured independently around the window.
    expected = 100 * (after.user + after.system - before.user - before.system) / wall
    stats = sampler.result["self"]
    assert stats["pid"] == busy.pid
    assert expected > 5
    assert abs(stats["cpu_percent"] - expected) < max(5.0, 0.25 * expected)
    assert stats["rss_max_mb"] >= stats["rss_mean_mb"] > 10


def test_a_comparison_names_which_kafka_it_ran(
    redis_server: Server, kafka_server: Server, apache_kafka: KafkaCluster
) -> None:
    from visionpipe.loadgen.compare import broker_label

    assert broker_label(redis_server.url) == "redis"
    assert broker_label(kafka_server.url) == "tansu"
    assert identify_broker(kafka_server.url)[1].startswith("Tansu (a Kafka-protocol broker, not Apache Kafka)")
    assert broker_label(apache_kafka.url) == "apache-kafka"
    assert identify_broker(apache_kafka.url)[1] == f"Apache Kafka {apache_kafka.version}"
    assert broker_label("kafka://10.1.2.3:9092#msk") == "msk", "a URL's fragment names a broker we cannot see"
    assert broker_label("kafka://10.1.2.3:9092") == "kafka"
