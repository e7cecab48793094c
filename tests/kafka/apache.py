"""Apache Kafka for tests: the release pinned in ``pom.xml``, run from its jars in KRaft mode on loopback.

``fetch.sh`` fetches the jars once into a cache folder outside the repository; a node is formatted with
``kafka.tools.StorageTool format`` and started as ``kafka.Kafka`` with a properties file written here. A
:class:`KafkaCluster` of one node serves the contract suite and the fault tests; one of three (replication,
``min.insync.replicas``) has node 0 as the only KRaft controller and every node a broker, so that killing
two brokers still leaves a controller to shrink each partition's ISR: producers then get
NOT_ENOUGH_REPLICAS, which is what a real cluster that lost two replicas answers, rather than timeouts
from a cluster that lost its quorum.

The JVM and the broker are sized for a 2-core CI box: a small heap, the serial collector, two network and
two I/O threads, few partitions in the internal topics, no initial rebalance delay, quick fencing of a
dead broker; and session timeouts down to 1 s allowed, as the tests use them.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.servers import Server, free_port, wait_for_port

HERE = Path(__file__).parent
FETCH = HERE / "fetch.sh"
LOG4J = HERE / "log4j2.properties"
# A JVM start, the broker's start-up and its registration with the controller: ~6 s on an idle 2-core box; a
# loaded one (two test workers, a stage warming up) takes several times that.
START_TIMEOUT_S = 120.0
# The serial collector and a small heap: a broker's heap holds requests in flight and metadata, not the log
# (that is the page cache). C1 only: the start costs about half the CPU, and a test broker never runs long
# enough for C2 to pay back.
JVM_OPTS = [
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.net.preferIPv4Stack=true",
    "-Djava.awt.headless=true",
]
BROKER_PROPS = {
    "num.network.threads": 2,
    "num.io.threads": 2,
    "num.replica.fetchers": 1,
    "background.threads": 2,
    "offsets.topic.num.partitions": 4,
    "transaction.state.log.num.partitions": 4,
    "group.initial.rebalance.delay.ms": 0,
    "group.min.session.timeout.ms": 1000,
    # Topics are ours to create (Broker.ensure): a test that forgot would pass on an auto-creating broker.
    "auto.create.topics.enable": "false",
    # A killed broker is fenced, and leaves the ISRs, in seconds rather than the defaults' 9 and 30.
    "broker.session.timeout.ms": 3000,
    "broker.heartbeat.interval.ms": 500,
    "replica.lag.time.max.ms": 5000,
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": 2000,
}


JAVA_MISSING = "Apache Kafka needs Java 17+: install a JRE (Debian: apt-get install openjdk-17-jre-headless)"


def kafka_version() -> str:
    m = re.search(r"<kafka.version>([^<]+)</kafka.version>", (HERE / "pom.xml").read_text())
    assert m is not None, "pom.xml pins no kafka.version"
    return m.group(1)


def kafka_home() -> Path:
    """The folder holding ``libs/*.jar``, fetched on first use; RuntimeError with what to install when it can't."""
    if shutil.which("java") is None:
        raise RuntimeError(JAVA_MISSING)
    done = subprocess.run(["sh", str(FETCH)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"{FETCH} failed")
    return Path(done.stdout.strip())


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (what ``StorageTool random-uuid`` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def java(home: Path, main: str, *args: str) -> list[str]:
    return ["java", *JVM_OPTS, f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{home / 'libs'}/*", main, *args]


@dataclass
class KafkaNode(Server):
    """One KRaft node: a broker, and on node 0 also the controller. Its data dir outlives a kill."""

    node_id: int = 0
    controller_port: int = 0

    def start(self) -> KafkaNode:
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - the process owns it while it runs
        self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, START_TIMEOUT_S, self.proc)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass
class KafkaCluster:
    nodes: list[KafkaNode]
    version: str
    home: Path
    start_s: float = field(default=0.0)  # how long the last full start took, format included

    @property
    def url(self) -> str:
        return "kafka://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def alive(self) -> list[KafkaNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every live node is a registered, unfenced broker in the metadata the cluster serves."""
        want = {n.node_id for n in self.alive()}
        bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in self.alive())
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while time.monotonic() < deadline:
            try:
                seen = set(admin.list_topics(timeout=1.0).brokers)
            except KafkaException:
                seen = set()
            if want <= seen:
                return
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None and n.node_id in want:
                    raise RuntimeError(f"kafka node {n.node_id} exited with {n.proc.returncode}:\n{n.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"kafka brokers {sorted(want)} not all registered after {timeout_s}s (seen {sorted(seen)})")

    def coordinator(self, group_id: str, timeout_s: float = 60.0) -> int:
        """The node id of ``group_id``'s coordinator (the leader of its ``__consumer_offsets`` partition); the first
        ask makes that internal topic, so this waits until the cluster can answer."""
        admin = AdminClient({"bootstrap.servers": self.url.removeprefix("kafka://"), "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return int(admin.describe_consumer_groups([group_id])[group_id].result(timeout=5).coordinator.id)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self, index: int) -> None:
        """kill -9 one node: no controlled shutdown, nothing flushed beyond what the OS has."""
        self.nodes[index].stop(kill=True)

    def start(self, index: int) -> None:
        self.nodes[index].start()
        self.wait_ready()

    def stop(self) -> None:
        for n in reversed(self.nodes):  # brokers before the controller, so they need not wait for it
            n.stop()


def _properties(node_id: int, port: int, controller_port: int, data: Path, replicas: int) -> str:
    controller = "CONTROLLER://127.0.0.1:" + str(controller_port)
    props: dict[str, object] = {
        "process.roles": "broker,controller" if node_id == 0 else "broker",
        "node.id": node_id,
        "controller.quorum.voters": f"0@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port}" + (f",{controller}" if node_id == 0 else ""),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data),
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min(2, replicas),
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min(2, replicas),
        "default.replication.factor": replicas,
        **BROKER_PROPS,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def start_apache_kafka(workdir: Path, nodes: int = 1) -> KafkaCluster:
    """Format and start ``nodes`` KRaft nodes on free loopback ports; returns once all are registered brokers."""
    t0 = time.monotonic()
    home = kafka_home()
    cid, controller_port = cluster_id(), free_port()
    members = []
    for i in range(nodes):
        node_dir = workdir / f"node{i}"
        node_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        props = node_dir / "server.properties"
        props.write_text(_properties(i, port, controller_port, node_dir / "data", nodes))
        argv = java(home, "kafka.Kafka", str(props))
        url = f"kafka://127.0.0.1:{port}"
        members.append(KafkaNode(argv, port, url, node_dir, node_id=i, controller_port=controller_port))

    def fmt(n: KafkaNode) -> None:
        props = str(n.workdir / "server.properties")
        # "=": a base64url id may begin with "-", which the tool would read as an option (one start in 64).
        argv = java(home, "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", props)
        done = subprocess.run(argv, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"formatting kafka node {n.node_id} failed:\n{(done.stdout + done.stderr).decode()[-2000:]}"
            )

    with ThreadPoolExecutor(nodes) as pool:  # one JVM start each: side by side
        list(pool.map(fmt, members))
    cluster = KafkaCluster(members, kafka_version(), home)
    try:
        for n in members:
            n.start()
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    cluster.start_s = time.monotonic() - t0
    return cluster
