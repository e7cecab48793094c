"""``visionpipe dlq``: look at dead-lettered messages, and send them back once the cause is fixed.

A message that a stage cannot process (bad image, bad schema, too many failed
tries) is parked on the dead-letter stream with its reason, its kind
(``bad_input``, ``deadline``, ``gave_up``) and original bytes
(:class:`~visionpipe.broker.base.DeadLetter`). ``list`` reads them without
taking them; ``replay`` republishes each one to the stream it came from and
acks it in its own group, so a replay never sends the same entry twice.
On Redis a replayed entry then leaves the stream; Kafka keeps it in the log
(``list`` still shows it) until retention removes it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import click

from visionpipe.broker import Broker, DeadLetter, connect
from visionpipe.envelope import REPLAYED, Envelope, EnvelopeError
from visionpipe.settings import Settings, load_settings
from visionpipe.topology import INGRESS

REPLAY_GROUP = "dlq-replay"
# Entries replayed per consume: small enough that an interrupted replay leaves little pending.
REPLAY_BATCH = 64


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
            "bytes": len(r.data),
        }


def _decode(raw: bytes) -> DeadLetter | None:
    try:
        return DeadLetter.decode(raw)
    except (ValueError, KeyError, TypeError, OverflowError):  # msgpack's errors are ValueErrors; int(inf) overflows
        return None


def replayable(record: DeadLetter) -> bytes:
    """The dead-lettered bytes, stamped as replayed: the stages had settled them once, and must settle them again.

    A stage's once-key names the submission (request id and ingress stamps), and the dead letter
    settled that key, so the bytes as they were would be acked as a duplicate with no output.
    Bytes that are no envelope go back as they were (their key is their place in the stream).
    """
    try:
        env = Envelope.decode(record.data)
    except EnvelopeError:
        return record.data
    env.stamp(INGRESS, REPLAYED, record.at_ns)
    return env.encode()


async def list_dead(broker: Broker, stream: str, limit: int) -> list[Entry]:
    return [Entry(d.id, _decode(d.data), len(d.data)) for d in await broker.peek(stream, limit)]


async def replay_dead(broker: Broker, stream: str, limit: int, timeout_s: float = 30.0) -> int:
    """Republish up to ``limit`` dead letters to their origin streams; returns how many went back.

    Runs until the replay group has nothing left (or ``timeout_s``), not until one
    empty read: a Kafka group join alone can take longer than a read's timeout.
    """
    await broker.ensure(stream, REPLAY_GROUP)
    done = 0
    deadline = time.monotonic() + timeout_s
    # Entries an interrupted replay left pending come first.
    batch = await broker.reclaim(stream, REPLAY_GROUP, "replay", 0.0, min(REPLAY_BATCH, limit))
    while done < limit:
        if not batch:
            batch = await broker.consume(stream, REPLAY_GROUP, "replay", min(REPLAY_BATCH, limit - done), 0.5)
        if not batch:
            if (await broker.backlog(stream, REPLAY_GROUP)).total == 0 or time.monotonic() > deadline:
                break
            continue
        for d in batch:
            record = _decode(d.data)
            if record is not None:  # an undecodable entry cannot be routed anywhere: acked and dropped
                await broker.publish(record.origin, [replayable(record)], [record.request_id])
                done += 1
        await broker.ack(stream, REPLAY_GROUP, batch)  # only after the republish: at least once
        batch = []
    return done


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
@click.option("--limit", type=int, default=1000, show_default=True)
def replay_cmd(broker_url: str | None, stream: str | None, limit: int) -> None:
    """Send dead letters back to the streams they came from."""
    settings, url = _settings(broker_url)

    async def go() -> int:
        async with await connect(url, settings) as broker:
            return await replay_dead(broker, stream or settings.streams.name("dead_letter"), limit)

    click.echo(f"replayed {asyncio.run(go())} messages")
