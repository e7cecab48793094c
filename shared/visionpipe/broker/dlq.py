"""``visionpipe dlq``: look at dead-lettered messages, and send them back once the cause is fixed.

A message that a stage cannot process (bad image, bad schema, too many failed
tries) is parked on the dead-letter stream with its reason, its kind (``bad_input``,
``deadline``, ``gave_up``) and original bytes
(:class:`~visionpipe.broker.base.DeadLetter`), kept there by its retention
(``streams.dead_letter_max_*``) whoever else reads it. ``list`` reads them
without taking them. ``replay`` moves each letter that is on the stream when it
starts back to the stream it came from, once: it reads them in its own group,
republishes each, acks it and removes it (Redis, memory; on Kafka the group's
committed offset marks it, and ``list`` still shows it until retention removes it).
A letter that fails again lands back on the stream while the replay runs; it is
not part of this replay (its snapshot is what was there at the start), so a
replay ends, and moves each letter once. ``--dry-run`` shows what would move;
``--id`` moves only the letters named.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import click

from visionpipe.broker import Broker, DeadLetter, Delivery, connect, wire
from visionpipe.envelope import REPLAYED, Envelope, EnvelopeError
from visionpipe.settings import Settings, load_settings
from visionpipe.topology import INGRESS

REPLAY_GROUP = "dlq-replay"
# Entries replayed per consume: small enough that an interrupted replay leaves little pending.
REPLAY_BATCH = 64
# An ingress stamp on each replayed message: which replay sent it (its start, ns). A letter carrying the running
# replay's own stamp failed again during it: not part of its snapshot, left for the next replay.
REPLAY_RUN = "replay_run"


@dataclass(frozen=True)
class Entry:
    id: str
    record: DeadLetter | None  # None: the entry itself is not a dead-letter record
    size: int

    def as_dict(self) -> dict[str, object]:
        r = self.record
        if r is None:
            return {"id": self.id, "error": "not a dead-letter record", "bytes": self.size}
        try:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.at_ns / 1e9))
        except (OverflowError, OSError, ValueError):  # a forged timestamp past time_t: show it raw
            at = str(r.at_ns)
        return {
            "id": self.id,
            "at": at,
            "kind": r.kind,
            "stage": r.stage,
            "origin": r.origin,
            "request_id": r.request_id,
            "reason": r.reason,
            "bytes": len(wire(r.data)),
        }


def _decode(raw: bytes) -> DeadLetter | None:
    try:
        return DeadLetter.decode(raw)
    except (ValueError, KeyError, TypeError, OverflowError):  # msgpack's errors are ValueErrors; int(inf) overflows
        return None


def replayable(record: DeadLetter, run: int = 0) -> bytes:
    """The dead-lettered bytes, stamped as replayed: the stages had settled them once, and must settle them again.

    A stage's once-key names the submission (request id and ingress stamps), and the dead letter
    settled that key, so the bytes as they were would be acked as a duplicate with no output.
    Bytes that are no envelope go back as they were (their key is their place in the stream).
    ``run`` marks which replay sent them, so that one failing again is told apart from the letters it replays.
    """
    try:
        env = Envelope.decode(record.data)
    except EnvelopeError:
        return wire(record.data)
    env.stamp(INGRESS, REPLAYED, record.at_ns)
    if run:
        env.stamp(INGRESS, REPLAY_RUN, run)
    return env.encode()


def _replay_run(record: DeadLetter) -> int | None:
    try:
        return Envelope.decode(record.data).ts(INGRESS, REPLAY_RUN)
    except EnvelopeError:
        return None


async def list_dead(broker: Broker, stream: str, limit: int) -> list[Entry]:
    return [Entry(d.id, _decode(wire(d.data)), len(wire(d.data))) for d in await broker.peek(stream, limit)]


@dataclass
class Replay:
    """What a replay did (or, dry, would do)."""

    snapshot: int = 0  # letters not yet moved when it started: what it may move
    moved: list[Entry] = field(default_factory=list)
    unreadable: int = 0  # entries that are no dead letter: nowhere to send them; removed
    not_selected: int = 0  # left on the stream: not among the --id given
    removed: bool = True  # whether moved letters left the stream (False on Kafka: the group's offset marks them)

    def summary(self, dry_run: bool) -> str:
        verb = "would replay" if dry_run else "replayed"
        parts = [f"{verb} {len(self.moved)} messages of the {self.snapshot} dead letters on the stream at the start"]
        if self.not_selected:
            parts.append(f"{self.not_selected} not selected by --id")
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable ({'would be ' if dry_run else ''}dropped)")
        if self.moved and not self.removed and not dry_run:
            parts.append("the broker keeps moved letters in its log; the replay group's offsets mark them as moved")
        return "; ".join(parts)


async def replay_dead(
    broker: Broker,
    stream: str,
    limit: int,
    timeout_s: float = 30.0,
    *,
    ids: Collection[str] = (),
    dry_run: bool = False,
) -> Replay:
    """Move the dead letters on ``stream`` now, up to ``limit`` (only ``ids`` when given), each once.

    Letters are read in the replay's own group: first those an interrupted replay left pending, then the rest.
    Each is republished to its origin, acked and removed; ``dry_run`` reads them and moves nothing (they stay
    pending in the group, where the next replay takes them up first). Runs until the snapshot is done, or
    ``timeout_s`` (a Kafka group join alone can take longer than one read's timeout).
    """
    await broker.ensure(stream, REPLAY_GROUP)
    run = time.time_ns()
    out = Replay(snapshot=(await broker.backlog(stream, REPLAY_GROUP)).total)
    deadline = time.monotonic() + timeout_s
    seen = 0
    batch = await broker.reclaim(stream, REPLAY_GROUP, "replay", 0.0, max(1, out.snapshot))
    while seen < out.snapshot and len(out.moved) < limit and time.monotonic() < deadline:
        if not batch:
            batch = await broker.consume(stream, REPLAY_GROUP, "replay", REPLAY_BATCH, 0.5)
            if not batch and (await broker.backlog(stream, REPLAY_GROUP)).lag == 0:
                break  # nothing left to deliver (retention may have taken letters of the snapshot meanwhile)
        done: list[Delivery] = []
        for d in batch:
            record = _decode(wire(d.data))
            if record is not None and _replay_run(record) == run:
                continue  # failed again during this replay: the next one's
            seen += 1
            if seen > out.snapshot or len(out.moved) >= limit:
                break
            if ids and d.id not in ids:
                out.not_selected += 1
            elif record is None:
                out.unreadable += 1
                done.append(d)
            else:
                out.moved.append(Entry(d.id, record, len(wire(d.data))))
                if not dry_run:
                    await broker.publish(record.origin, [replayable(record, run)], [record.request_id])
                    done.append(d)
        if done and not dry_run:
            await broker.ack(stream, REPLAY_GROUP, done)  # only after the republish: at least once
            out.removed = await broker.remove(stream, [d.id for d in done])
        batch = []
    return out


def _settings(broker_url: str | None) -> tuple[Settings, str]:
    settings = load_settings(broker={"url": broker_url})
    return settings, settings.broker.url


@click.group("dlq")
def dlq() -> None:
    """List or replay dead-lettered messages."""


@dlq.command("list")
@click.option("--broker", "broker_url", help="broker URL (default: settings)")
@click.option("--stream", help="dead-letter stream (default: settings streams.dead_letter)")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_cmd(broker_url: str | None, stream: str | None, limit: int, as_json: bool) -> None:
    """Show dead letters (oldest first) without taking them off the stream, each with its kind.

    Kinds: bad_input (the input was refused), deadline (it ran out of time where it was), gave_up (the
    pipeline gave up after repeated failures).
    """
    settings, url = _settings(broker_url)

    async def go() -> list[Entry]:
        async with await connect(url, settings) as broker:
            return await list_dead(broker, stream or settings.streams.name("dead_letter"), limit)

    for e in asyncio.run(go()):
        row = e.as_dict()
        click.echo(json.dumps(row) if as_json else "  ".join(f"{k}={v}" for k, v in row.items()))


@dlq.command("replay")
@click.option("--broker", "broker_url", help="broker URL (default: settings)")
@click.option("--stream", help="dead-letter stream (default: settings streams.dead_letter)")
@click.option("--limit", type=int, default=1000, show_default=True, help="move at most this many")
@click.option("--id", "ids", multiple=True, help="move only this entry (an id `list` shows); repeatable")
@click.option("--dry-run", is_flag=True, help="show what would be moved; move nothing")
def replay_cmd(broker_url: str | None, stream: str | None, limit: int, ids: tuple[str, ...], dry_run: bool) -> None:
    """Send each dead letter on the stream now back to the stream it came from, once, and take it off.

    Letters that fail again while the replay runs come back as new dead letters, for a later replay.
    """
    settings, url = _settings(broker_url)

    async def go() -> Replay:
        async with await connect(url, settings) as broker:
            name = stream or settings.streams.name("dead_letter")
            return await replay_dead(broker, name, limit, ids=ids, dry_run=dry_run)

    done = asyncio.run(go())
    if dry_run:
        for entry in done.moved:
            click.echo("  ".join(f"{k}={v}" for k, v in entry.as_dict().items()))
    click.echo(done.summary(dry_run))
