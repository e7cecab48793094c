"""Each policy built and tried on its own, the order the chain fires them in, and a policy of a user's own."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.services.runtime.helpers import EchoStage, settings_for
from visionpipe.broker import DeadLetter, Delivery, MemoryBroker
from visionpipe.envelope import Envelope
from visionpipe.hops import Expiry
from visionpipe.ingress import Frame, ensure_pipeline_streams, frame_envelope, submit_images
from visionpipe.metrics import Metrics
from visionpipe.services.runtime.budgets import Budgets
from visionpipe.services.runtime.middleware import (
    Chain,
    DeadLetters,
    Deadline,
    Dedupe,
    Heartbeat,
    Item,
    Middleware,
    Retries,
    StageContext,
    StageMetrics,
    Verdict,
    load_middleware,
)
from visionpipe.services.runtime.worker import Worker
from visionpipe.topology import DECODE

DOCS = Path(__file__).resolve().parents[4] / "docs" / "middleware.md"


def _ctx(ns: str, broker: MemoryBroker | None = None, budgets: bool = False, **service: object) -> StageContext:
    settings = settings_for(ns, **service)
    held = Budgets(DECODE, settings) if budgets else None
    return StageContext.of(DECODE, broker or MemoryBroker(settings.broker.url), settings, Metrics(), held)


def _item(rid: str = "r1", attempts: int = 1, image: bytes = b"x", deadline_ns: int | None = None) -> Item:
    env = frame_envelope(Frame(image, request_id=rid))
    env.deadline_ns = deadline_ns
    data = env.encode()
    return Item(Delivery("frames", f"1-{rid}", data, attempts=attempts), envelope=Envelope.decode(data))


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str], decide: Verdict | None = None) -> None:
        self.name, self.log, self.decide = name, log, decide

    def on_consume(self, ctx: StageContext, items: Sequence[Item]) -> None:
        self.log.append(f"consume:{self.name}")

    def admit(self, ctx: StageContext, item: Item) -> None:
        self.log.append(f"admit:{self.name}")
        if self.decide is not None:
            item.verdict = self.decide

    def on_outcome(self, ctx: StageContext, item: Item) -> None:
        self.log.append(f"outcome:{self.name}")

    async def before_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        self.log.append(f"before_ack:{self.name}")

    def after_ack(self, ctx: StageContext, items: Sequence[Item]) -> None:
        self.log.append(f"after_ack:{self.name}")

    def on_release(self, ctx: StageContext, items: Sequence[Item]) -> None:
        self.log.append(f"release:{self.name}")


async def test_the_chain_enters_in_order_and_unwinds_in_reverse(ns: str) -> None:
    log: list[str] = []
    chain = Chain(_ctx(ns), [Recorder("a", log), Recorder("b", log)])
    it = _item()
    chain.on_consume([it])
    chain.admit(it)
    chain.on_outcome(it)
    await chain.before_ack([it])
    chain.after_ack([it])
    chain.on_release([it])
    assert log == [
        "consume:a",
        "consume:b",
        "admit:a",
        "admit:b",
        "outcome:b",
        "outcome:a",
        "before_ack:b",
        "before_ack:a",
        "after_ack:b",
        "after_ack:a",
        "release:b",
        "release:a",
    ]


def test_the_first_policy_that_decides_ends_the_admission(ns: str) -> None:
    log: list[str] = []
    chain = Chain(_ctx(ns), [Recorder("a", log, Verdict.DUPLICATE), Recorder("b", log)])
    it = _item()
    chain.admit(it)
    assert it.verdict is Verdict.DUPLICATE and log == ["admit:a"]


async def test_dedupe_skips_a_copy_in_progress_and_acks_one_done_here(ns: str) -> None:
    ctx, dedupe = _ctx(ns), Dedupe()
    first, copy = _item("same"), _item("same")
    dedupe.admit(ctx, first)
    dedupe.admit(ctx, copy)
    assert (first.verdict, copy.verdict) == (Verdict.WORK, Verdict.SKIP)
    first.verdict = Verdict.DONE
    await dedupe.before_ack(ctx, [first])
    assert first.once is not None and first.once.startswith(f"{ctx.settings.streams.prefix}")
    dedupe.after_ack(ctx, [first])
    dedupe.on_release(ctx, [first])
    redelivered = Item(first.delivery, envelope=first.envelope)
    dedupe.admit(ctx, redelivered)
    assert redelivered.verdict is Verdict.DUPLICATE
    reused = _item("same")  # the same id submitted again later: a new ingress stamp, so a new request
    dedupe.admit(ctx, reused)
    assert reused.verdict is Verdict.WORK


@pytest.mark.parametrize(("attempts", "dead"), [(1, False), (2, False), (3, True)])
def test_retries_dead_letters_past_the_bound(ns: str, attempts: int, dead: bool) -> None:
    ctx = _ctx(ns)  # max_retries 2
    it = _item(attempts=attempts)
    Retries(ctx.settings.limits.max_retries).admit(ctx, it)
    assert (it.verdict is Verdict.DEAD) is dead
    if dead:
        assert it.reason == "gave up after 2 deliveries that failed or timed out"


@pytest.mark.parametrize(
    ("offset_s", "fastest_s", "why"),
    [(-1.0, 0.0, "passed"), (0.2, 0.5, "budget"), (30.0, 0.5, None), (None, 0.0, None)],
)
async def test_deadline_answers_a_request_that_cannot_make_it_on_the_results_stream(
    ns: str, offset_s: float | None, fastest_s: float, why: str | None
) -> None:
    """Past its deadline, or with less of it left than the stage's fastest answer: an expiry, not a dead letter."""
    ctx = _ctx(ns, budgets=True)
    assert ctx.budgets is not None
    ctx.budgets.fastest_s = fastest_s
    deadline = None if offset_s is None else time.time_ns() + int(offset_s * 1e9)
    it = _item(deadline_ns=deadline)
    policy = Deadline()
    policy.admit(ctx, it)
    assert (it.verdict is Verdict.EXPIRED) is (why is not None)
    await policy.before_ack(ctx, [it])
    await DeadLetters().before_ack(ctx, [it])
    if why is None:
        assert it.outputs == []
        return
    (out,) = it.outputs  # one answer, on the results stream; nothing on the dead letters
    assert out.stream == ctx.results == f"{ns}.results"
    answer = Expiry.of(Envelope.decode(out.data))
    assert answer is not None and answer.stage == DECODE and answer.why == why
    late_ms = {"passed": 1000.0, "budget": 300.0}[why]
    assert late_ms <= answer.late_ms < late_ms + 200


async def test_dead_letters_carry_the_reason_and_the_original_bytes(ns: str) -> None:
    ctx = _ctx(ns)
    dead, done = _item("d"), _item("ok")
    dead.kill("bad on purpose")
    done.verdict = Verdict.DONE
    await DeadLetters().before_ack(ctx, [dead, done])
    assert done.outputs == []
    (out,) = dead.outputs
    assert out.stream == ctx.dead_letter
    record = DeadLetter.decode(out.data)
    assert (record.reason, record.stage, record.origin, record.request_id) == ("bad on purpose", DECODE, ctx.input, "d")
    assert record.data == dead.delivery.data


def test_stage_metrics_count_what_was_decided(ns: str) -> None:
    ctx = _ctx(ns)
    items = [_item("a"), _item("b"), _item("c")]
    items[0].verdict, items[1].verdict, items[2].verdict = Verdict.DONE, Verdict.DEAD, Verdict.DUPLICATE
    StageMetrics().after_ack(ctx, items)
    text = ctx.metrics.exposition().decode()
    for outcome in ("ok", "dead_letter", "duplicate"):
        assert f'visionpipe_messages_total{{outcome="{outcome}",stage="decode"}} 1.0' in text


async def test_the_heartbeat_keeps_a_slow_delivery_from_reclaim_until_released(ns: str) -> None:
    """A real broker: another consumer cannot reclaim what is beaten for, and can once it is released."""
    ctx = _ctx(ns)
    broker = ctx.broker
    await ensure_pipeline_streams(broker, ctx.settings)
    await submit_images(broker, ctx.settings, [Frame(b"x", request_id="slow")])
    (delivery,) = await broker.consume(ctx.input, ctx.group, ctx.consumer, 1, 0.1)
    it = Item(delivery)
    heartbeat = Heartbeat(reclaim_idle_s=0.15, work_timeout_s=60)
    heartbeat.on_consume(ctx, [it])
    await asyncio.sleep(0.4)
    assert await broker.reclaim(ctx.input, ctx.group, "thief", 0.15, 1) == []
    heartbeat.on_release(ctx, [it])
    await asyncio.sleep(0.3)
    (stolen,) = await broker.reclaim(ctx.input, ctx.group, "thief", 0.15, 1)
    assert stolen.id == delivery.id


def _docs_example(tmp_path: Path) -> str:
    """The example policy exactly as docs/middleware.md shows it, as an importable module."""
    (code,) = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (tmp_path / "audit_example.py").write_text(code)
    return "audit_example:AuditLog"


async def test_the_documented_policy_of_ones_own_runs_in_a_real_worker(
    ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    settings = settings_for(ns, middleware=[_docs_example(tmp_path)])
    broker = MemoryBroker(settings.broker.url)
    await ensure_pipeline_streams(broker, settings)
    ids = await submit_images(broker, settings, [Frame(b"a"), Frame(b"bad"), Frame(b"b")])
    worker = Worker(EchoStage(), broker, settings, Metrics(), per_consume=4, drain=True)
    await asyncio.wait_for(worker.run(), 20)
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    got = {line["request"]: (line["verdict"], line["reason"]) for line in lines}
    assert got == {ids[0]: ("done", None), ids[1]: ("dead", "bad on purpose"), ids[2]: ("done", None)}
    assert {line["stage"] for line in lines} == {DECODE}
    sys.modules.pop("audit_example", None)


@pytest.mark.parametrize(
    ("path", "error"),
    [("no_colon", "expected 'package.module:Class'"), ("json:JSONDecoder", "is not a visionpipe Middleware")],
)
def test_a_wrong_policy_name_fails_at_start(path: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        load_middleware([path])
    with pytest.raises(ModuleNotFoundError):
        load_middleware(["no.such.module:Thing"])
