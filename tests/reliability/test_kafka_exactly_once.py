"""Exactly once on Apache Kafka with ``broker.kafka_transactions``: each settle publishes a batch's outputs and
commits its offsets in one transaction, so what a read_committed reader of the results topic sees holds every
request once, with no de-duplication anywhere after the pipeline.

Three cases, each counted raw from the topics (``kafka_audit.py``) and reported as lost / doubled /
dead-lettered:

* kill -9 of every stage at random points, twenty rounds, each stage restarted at once under its consumer
  name (so under its transactional id, as an orchestrator restarts a pod);
* a zombie: a stage stopped (SIGSTOP) while a transaction is open, its replacement started under the same
  transactional id, then the zombie woken: the replacement fenced it, so neither its open transaction nor
  anything it tries after waking becomes visible;
* a rebalance from one member to three during load.

The processes are the real ``visionpipe serve`` workers over the real broker code, with stand-in stage bodies
(tests/reliability/inject) so sixty restarts fit in CI's time.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.kafka.apache import KafkaCluster
from tests.reliability.harness import (
    STANDIN_ENV,
    Processes,
    Sink,
    StageProc,
    frames,
    http_get,
    reliability_overrides,
    settings_of,
    settle_backlogs,
    stage_env,
)
from tests.reliability.kafka_audit import dead_reasons, result_counts, whereabouts
from tests.reliability.poison import REASONS, poison_inputs
from visionpipe import topology
from visionpipe.broker import Broker, BrokerError, connect
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images
from visionpipe.settings import Settings
from visionpipe.topology import STAGES

ROUNDS = 20
# A dead member is noticed after the session timeout (the test broker allows 1 s): short, so each kill's
# rebalance is quick; heartbeats every 300 ms keep live members in.
SESSION_TIMEOUT_MS, HEARTBEAT_MS = 1500, 300
# Each stage is killed up to this long after the one before, at random: mid-consume, mid-batch, mid-transaction.
KILL_WITHIN_S = 1.5
FRAMES_PER_TICK, TICK_S = 2, 0.3
BAD_KINDS = ("empty", "truncated", "not-an-image", "no-image-field", "unknown-version", "bad-array")
DRAIN_S = 60.0


def kafka_overrides(ns: str, url: str, **broker: Any) -> dict[str, Any]:
    """The reliability tests' settings, with transactions on and quick group membership; ``broker`` on top."""
    broker = {
        "kafka_transactions": True,
        "kafka_session_timeout_ms": SESSION_TIMEOUT_MS,
        "kafka_heartbeat_ms": HEARTBEAT_MS,
        "reclaim_idle_s": 2.0,
        **broker,
    }
    return reliability_overrides(ns, url, broker=broker, service={"reclaim_interval_s": 0.5})


class Feeder:
    """Frames at a steady rate until stopped; ``sent`` is every request id the ingress accepted, ``unsure`` those
    of batches whose publish raised (a loaded box may time out a write the brokers appended all the same)."""

    def __init__(self, broker: Broker, settings: Settings, tag: str) -> None:
        self.broker, self.settings, self.tag = broker, settings, tag
        self.sent: list[str] = []
        self.broker_errors = 0
        self.unsure: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        i = 0
        while True:
            imgs = frames(FRAMES_PER_TICK, seed=len(self.sent) + 1)
            batch = [Frame(img, request_id=f"{self.tag}-{i}-{j}") for j, img in enumerate(imgs)]
            try:
                self.sent += await submit_images(self.broker, self.settings, batch, wait_s=30)
            except BrokerError:  # the broker in trouble (a broker of the cluster just died): retry, as a client does
                self.broker_errors += 1
                self.unsure.update(f.request_id for f in batch)
            i += 1
            await asyncio.sleep(TICK_S)

    def __enter__(self) -> Feeder:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def stop(self) -> None:
        """Stop feeding; a feeder that died of an error fails the test with it."""
        assert self._task is not None
        if self._task.done():
            self._task.result()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def audit(
    url: str, s: Settings, sent: list[str], bad: dict[str, str], sink: Sink, refused: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Wait for every result and dead letter, then count the topics raw; returns the case's figures.

    ``refused``: requests the ingress was told were not published, which may show once all the same (a write
    the brokers appended but could not replicate in time is refused, and kept once replicas are back).
    """
    try:
        await sink.results_for(set(sent), timeout_s=DRAIN_S)
    except AssertionError:
        missing = set(sent) - sink.results.keys()
        names = [s.streams.name(n) for n in ("frames", "tensors", "crops", "results", "dead_letter")]
        async with await connect(settings=s) as broker:
            backlogs = {st: await broker.backlog(topology.input_stream(st, s), st) for st in STAGES}
        where = await asyncio.to_thread(whereabouts, url, names, missing)
        raise AssertionError(f"{len(missing)} results missing {sorted(missing)[:5]}: {where}; {backlogs}") from None
    await sink.until(lambda: set(bad) <= {d.request_id for d in sink.dead}, 60, lambda: "bad inputs not dead")
    async with await connect(settings=s) as broker:
        assert await settle_backlogs(broker, s, 60) == 0, "every stage's backlog drains to 0"
    counts = await asyncio.to_thread(result_counts, url, s.streams.name("results"))
    letters = await asyncio.to_thread(dead_reasons, url, s.streams.name("dead_letter"))
    lost = [rid for rid in sent if counts[rid] == 0]
    doubled = {rid: n for rid, n in counts.items() if n > 1}
    good_dead = [rid for rid in sent if rid in letters]
    assert not set(counts) - set(sent) - refused, "nothing in the results that was not sent"
    for rid, kind in bad.items():
        assert len(letters.get(rid, [])) == 1, (kind, letters.get(rid))
        assert any(w in letters[rid][0] for w in REASONS[kind]), (kind, letters[rid])
    figures = {"sent": len(sent), "lost": len(lost), "doubled": len(doubled), "good dead-lettered": len(good_dead)}
    return figures | ({"refused yet kept": len(refused & set(counts))} if refused else {})


def poison(ns: str) -> list[Any]:
    return [p for p in poison_inputs(ns) if p.kind in BAD_KINDS and p.request_id][::2]


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_kill9_of_each_stage_twenty_times_leaves_each_result_once_in_read_committed(
    apache_kafka: KafkaCluster, tmp_path: Path
) -> None:
    ns = f"keo{uuid.uuid4().hex[:8]}"
    s = settings_of(kafka_overrides(ns, apache_kafka.url))
    procs = Processes({**stage_env(kafka_overrides(ns, apache_kafka.url)), **STANDIN_ENV}, tmp_path)
    rng = random.Random(27)
    bad = poison(ns)
    kills = dict.fromkeys(STAGES, 0)
    try:
        async with await connect(settings=s) as broker:
            await ensure_pipeline_streams(broker, s)
            stages = {stage: procs.start(stage) for stage in STAGES}
            for p in stages.values():
                await asyncio.to_thread(p.wait_ready)
            sink = await Sink(broker, s).open()
            for p in bad:
                await broker.publish(s.streams.name(p.stream), [p.data], [p.request_id])
            feeder = Feeder(broker, s, ns)
            t0 = time.monotonic()
            with feeder:
                for _ in range(ROUNDS):
                    order = list(STAGES)
                    rng.shuffle(order)
                    for stage in order:
                        await asyncio.sleep(rng.uniform(0, KILL_WITHIN_S))
                        stages[stage].signal(signal.SIGKILL)
                        stages[stage].wait(10)
                        stages[stage].restart()
                        kills[stage] += 1
                    for p in stages.values():  # the next round kills a stage that is back at work
                        await asyncio.to_thread(p.wait_ready)
                    await sink.poll(0.01)
                await feeder.stop()
            killing_s = time.monotonic() - t0
            bad_ids = {p.request_id: p.kind for p in bad}
            figures = await audit(apache_kafka.url, s, feeder.sent, bad_ids, sink, frozenset(feeder.unsure))
    finally:
        procs.close()
    print(
        f"\nexactly once on Apache Kafka {apache_kafka.version}, transactions on, kill -9 x{sum(kills.values())} "
        f"({kills}) over {killing_s:.0f}s: {figures}; {len(bad)} bad inputs each dead-lettered once "
        f"(read_committed, raw, no de-duplication)"
    )
    assert figures["lost"] == figures["doubled"] == figures["good dead-lettered"] == 0, figures


# The stopped stage's transaction stays open this long (outputs produced, offsets not yet sent): time to stop it.
HOLD_S = 2.0


def _open_transactions(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_zombie_stopped_inside_a_transaction_is_fenced_by_its_replacement(
    apache_kafka: KafkaCluster, tmp_path: Path
) -> None:
    """SIGSTOP the detector with a transaction open; a replacement under the same consumer name (so the same
    transactional.id) takes its partitions and, on start, fences it and aborts the open transaction; SIGCONT
    the zombie: whatever it tries to commit is refused. The results hold each request once."""
    ns = f"kzo{uuid.uuid4().hex[:8]}"
    overrides = kafka_overrides(ns, apache_kafka.url)
    s = settings_of(overrides)
    opened = tmp_path / "txn-open"
    hold = {"RELIABILITY_TXN_HOLD_S": str(HOLD_S), "RELIABILITY_TXN_OPEN_FILE": str(opened)}
    procs = Processes({**stage_env(overrides), **STANDIN_ENV}, tmp_path)
    try:
        async with await connect(settings=s) as broker:
            await ensure_pipeline_streams(broker, s)
            stages = {stage: procs.start(stage, env=hold if stage == "detector" else None) for stage in STAGES}
            for p in stages.values():
                await asyncio.to_thread(p.wait_ready)
            sink = await Sink(broker, s).open()
            feeder = Feeder(broker, s, ns)
            with feeder:
                deadline = time.monotonic() + 60
                while not _open_transactions(opened) and time.monotonic() < deadline:
                    await sink.poll(0.05)
                assert _open_transactions(opened), "the detector never opened a transaction"
                zombie = stages["detector"]
                zombie.signal(signal.SIGSTOP)
                t_stop = time.monotonic()
                replacement = StageProc("detector", procs.env, tmp_path, consumer=zombie.consumer).start()
                procs.procs.append(replacement)
                await asyncio.to_thread(replacement.wait_ready)
                before = len(sink.results)
                while len(sink.results) < before + 10 and time.monotonic() - t_stop < 60:
                    await sink.poll(0.1)  # the replacement works: the zombie's partitions are its
                zombie.signal(signal.SIGCONT)  # wakes inside its transaction, and tries to commit it
                await asyncio.sleep(3 * HOLD_S)
                await sink.poll(0.1)
                await feeder.stop()
            zombie_log = zombie.log_tail(20000)
            zombie.stop()
            figures = await audit(apache_kafka.url, s, feeder.sent, {}, sink, frozenset(feeder.unsure))
    finally:
        procs.close()
    fenced = [line for line in zombie_log.splitlines() if "fenced" in line.lower()]
    print(
        f"\nzombie on Apache Kafka {apache_kafka.version}: detector stopped inside an open transaction, replaced "
        f"under the same transactional.id, woken: {figures}; the zombie's log: {fenced[:1]}"
    )
    assert fenced, f"the zombie was not told it was fenced:\n{zombie_log[-3000:]}"
    assert figures["lost"] == figures["doubled"] == figures["good dead-lettered"] == 0, figures


OK_COUNT = re.compile(rb'visionpipe_messages_total\{outcome="ok",stage="(\w+)"\} (\S+)')
# After the joiners are ready, frames keep coming this long at most, until a joiner has settled work.
JOINERS_WORK_WITHIN_S = 60.0


def _ok_count(p: StageProc) -> float:
    m = OK_COUNT.search(http_get(p.port, "/metrics")[1])
    return float(m.group(2)) if m else 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_rebalance_from_one_decode_member_to_three_under_load_keeps_each_result_once(
    apache_kafka: KafkaCluster, tmp_path: Path
) -> None:
    """Two decode members join the first during load (cooperative-sticky: partitions move incrementally); the
    first's uncommitted work on a partition it gives up is redone by the new owner, and its transactions
    keep that redo from showing twice."""
    ns = f"krb{uuid.uuid4().hex[:8]}"
    overrides = kafka_overrides(ns, apache_kafka.url)
    s = settings_of(overrides)
    procs = Processes({**stage_env(overrides), **STANDIN_ENV}, tmp_path)
    try:
        async with await connect(settings=s) as broker:
            await ensure_pipeline_streams(broker, s)
            stages = [procs.start(stage) for stage in STAGES]
            for p in stages:
                await asyncio.to_thread(p.wait_ready)
            sink = await Sink(broker, s).open()
            feeder = Feeder(broker, s, ns)
            with feeder:
                while len(sink.results) < 20:
                    await sink.poll(0.1)
                joined = [procs.start("decode"), procs.start("decode")]
                for p in joined:
                    await asyncio.to_thread(p.wait_ready)
                t_scale = time.monotonic()
                while time.monotonic() - t_scale < JOINERS_WORK_WITHIN_S and not any(_ok_count(p) for p in joined):
                    await sink.poll(0.2)
                joiners_at = time.monotonic() - t_scale
                await asyncio.sleep(3.0)  # load goes on across the rebalance
                await feeder.stop()
            work = {p.consumer: _ok_count(p) for p in [stages[0], *joined]}
            figures = await audit(apache_kafka.url, s, feeder.sent, {}, sink, frozenset(feeder.unsure))
            procs.assert_alive()
    finally:
        procs.close()
    print(
        f"\nrebalance 1 -> 3 decode members on Apache Kafka {apache_kafka.version}, transactions on: {figures}; "
        f"work per member {work}; a joiner settled work {joiners_at:.1f}s after the scale"
    )
    assert sum(1 for n in work.values() if n > 0) >= 2, f"the new members never got partitions: {work}"
    assert figures["lost"] == figures["doubled"] == figures["good dead-lettered"] == 0, figures
