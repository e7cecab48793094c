"""What Kafka transactions cost a stage: one relay member (consume → settle with one output per input) over Apache
Kafka, with ``broker.kafka_transactions`` off and on, side by side, alternating, on one broker.

Usage (from the repository root): ``.venv/bin/python benchmarks/kafka_transactions.py OUT.json [--count N]``.
Starts the tests' Apache Kafka (tests/kafka/apache.py), writes messages/s per case and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kafka.apache import start_apache_kafka
from visionpipe.broker import Output, Settled, connect
from visionpipe.settings import load_settings

SIZE = 30_000  # bytes: a decoded-tensor message is larger, a frame about this


async def relay(url: str, transactions: bool, count: int, batch: int) -> float:
    """Messages per second settled by one relay member, from a topic already holding ``count`` messages."""
    s = load_settings(broker={"kafka_transactions": transactions})
    ns = f"bt{uuid.uuid4().hex[:8]}"
    src, dst = f"{ns}.in", f"{ns}.out"
    async with await connect(url, s) as broker:
        await broker.ensure(src, "relay")
        await broker.ensure(dst, "sink")
        payload = os.urandom(SIZE)
        for i in range(0, count, 500):
            n = min(500, count - i)
            await broker.publish(src, [payload] * n, [str(i + j) for j in range(n)])
        got = []
        while not got:  # the group join, outside the timing: the clock starts once the first batch is in hand
            got = await broker.consume(src, "relay", "r", batch, 0.5)
        done, t0 = 0, time.perf_counter()
        while True:
            if got:
                await broker.settle(src, "relay", [Settled(d, (Output(dst, d.data, d.key),)) for d in got])
                done += len(got)
            if done >= count:
                break
            got = await broker.consume(src, "relay", "r", batch, 0.5)
        return done / (time.perf_counter() - t0)


async def main(out: Path, count: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        cluster = start_apache_kafka(Path(work))
        try:
            rows = []
            for batch in (1, 16):
                for rep in range(2):  # off, on, off, on: a drifting host hits both alike
                    for txn in (False, True):
                        rate = await relay(cluster.url, txn, count, batch)
                        rows.append({"transactions": txn, "batch": batch, "rep": rep, "msg_per_s": round(rate, 1)})
                        print(rows[-1], flush=True)
        finally:
            cluster.stop()
    doc = {
        "kafka": cluster.version,
        "message_bytes": SIZE,
        "count": count,
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()
    asyncio.run(main(args.out, args.count))
