"""Item 6, poison retry bound: a message whose processing keeps failing for a reason outside it is
retried a bounded number of times, then dead-lettered; `visionpipe dlq list` shows it and, once the
cause is fixed, `visionpipe dlq replay` sends it back and it is processed once.

The failure is real, not injected in code: the decode stage runs as a Redis ACL user that may not
yet write its output stream, so every attempt fails at publish and leaves the delivery pending.
That is what a transient failure looks like to the worker (the broker refused the write); each
reclaim counts a delivery, and past ``limits.max_retries`` the worker gives up. The operator then
grants the permission (the "fix") and replays.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import redis

from tests.reliability.conftest import ADMIN_PASSWORD, SECURED_MAX_RETRIES, STAGE_PASSWORD, SecuredStage
from tests.reliability.harness import VISIONPIPE, frames, request_id_of
from visionpipe.broker import connect
from visionpipe.broker.dlq import list_dead
from visionpipe.ingress import Frame, submit_images

# max_retries deliveries, each idle 1 s before the 0.5 s reclaim loop takes it back, on a busy box.
DEAD_LETTER_TIMEOUT_S = 45.0
REPLAY_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60


def cli(sec: SecuredStage, *args: str) -> str:
    """Run ``visionpipe ARGS`` as the operator (credentials and TLS files from the environment only)."""
    done = subprocess.run(
        [VISIONPIPE, *args], env={**os.environ, **sec.admin_env}, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for secret in (ADMIN_PASSWORD, STAGE_PASSWORD):
        assert secret not in done.stdout + done.stderr
    return done.stdout


def _outputs(admin: redis.Redis, stream: str) -> list[str]:
    return [request_id_of(fields[b"d"]) or "?" for _id, fields in admin.xrange(stream)]


async def test_failing_delivery_is_retried_bounded_then_dead_lettered_and_replayed(
    secured_decode: SecuredStage, tag: str
) -> None:
    sec, s = secured_decode, secured_decode.settings
    rid = f"{tag}-refused-output"
    admin = redis.Redis(port=sec.server.port, username="admin", password=ADMIN_PASSWORD)
    dead_stream, out_stream = s.streams.name("dead_letter"), s.streams.name("tensors")
    try:
        async with await connect(settings=s) as broker:
            t0 = time.monotonic()
            await submit_images(broker, s, [Frame(frames(1, seed=61)[0], request_id=rid)])
            record = None
            while record is None and time.monotonic() - t0 < DEAD_LETTER_TIMEOUT_S:
                entries = await list_dead(broker, dead_stream, 1000)
                record = next((e.record for e in entries if e.record and e.record.request_id == rid), None)
                await asyncio.sleep(0.2)
            took = time.monotonic() - t0
            assert record is not None, f"never dead-lettered:\n{sec.stage.log_tail()}"
            assert f"gave up after {SECURED_MAX_RETRIES} deliveries" in record.reason
            assert (await broker.backlog(s.streams.name("frames"), "decode")).total == 0, "acked once dead-lettered"
        assert rid not in _outputs(admin, out_stream)
        rows = [json.loads(line) for line in cli(sec, "dlq", "list", "--json").splitlines()]
        row = next(r for r in rows if r.get("request_id") == rid)
        assert row["stage"] == "decode" and row["origin"] == s.streams.name("frames") and "gave up" in row["reason"]
        assert row["kind"] == "gave_up"
        assert sec.stage.alive(), "failed publishes never take the stage down"

        admin.execute_command("ACL", "SETUSER", "decode", f"~{out_stream}")  # the operator's fix
        assert "replayed 1 messages" in cli(sec, "dlq", "replay")
        deadline = time.monotonic() + REPLAY_TIMEOUT_S
        while rid not in _outputs(admin, out_stream) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _outputs(admin, out_stream).count(rid) == 1, sec.stage.log_tail()
        assert not [
            r
            for r in json.loads("[" + ",".join(cli(sec, "dlq", "list", "--json").splitlines()) + "]")
            if r.get("request_id") == rid
        ], "a replayed entry leaves the dead-letter stream"
    finally:
        keys = (f"~{s.streams.name('frames')}", f"~{dead_stream}", f"~{s.streams.prefix}.once.*")
        admin.execute_command("ACL", "SETUSER", "decode", "resetkeys", *keys)  # as the fixture made it
        admin.close()
    print(
        f"\nretry bound: dead-lettered after {SECURED_MAX_RETRIES} failed deliveries in {took:.1f}s "
        f"(reclaim idle {s.broker.reclaim_idle_s}s); replayed -> 1 output"
    )
