"""End-to-end cases against the compose stack deploy/compose/check.sh started, run from outside the containers.

Everything goes through what a user has: the gateway's and Redis's published loopback ports, the `docker compose`
command, and the project's own load generator (the host's venv, broker mode, so a result delivered twice is seen
and counted). Each case prints one line and appends a JSON row (case, sent, answered, lost, doubled, ok, note) to
OUT/cases.jsonl; the script exits 1 when any case failed.

    python deploy/compose/e2e.py --compose "docker compose -p P -f docker-compose.yml -f …" \
        --gateway http://127.0.0.1:PORT --redis redis://127.0.0.1:PORT/0 --out DIR --broker-label redis CASE…
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "shared" / "visionpipe" / "samples"
VENV_BIN = Path(sys.executable).parent
FEED = "vp.results-json"  # the gateway's JSON feed of every result it read (prefix vp, as in docker-compose.yml)
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass
class Row:
    case: str
    sent: int | None = None
    answered: int | None = None
    lost: int | None = None
    doubled: int | None = None
    ok: bool = False
    note: str = ""


@dataclass
class Ctx:
    compose: list[str]
    gateway: str
    redis: str | None
    out: Path
    broker: str
    rate: float
    duration: float


def run(cmd: list[str], timeout: float = 600, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    print("  $", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


# --- the shipped photos through /v1/detect -----------------------------------------------------------------------


def expected_labels(out: Path) -> dict[str, list[str]]:
    """What `make run` gives for the shipped samples: `visionpipe run` on this host, in one process, on the CPU."""
    path = out / "expected.jsonl"
    if not path.exists():
        run([str(VENV_BIN / "visionpipe"), "run", "--device", "cpu", "--quiet", "--out", str(path), str(SAMPLES)])
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {Path(r["path"]).name: sorted(o["label_name"] for o in r.get("objects", [])) for r in rows if r["ok"]}


def detect(gateway: str, image: Path, request_id: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{gateway}/v1/detect?timeout_ms=60000",
        data=image.read_bytes(),
        headers={"Content-Type": IMAGE_TYPES[image.suffix.lower()], "X-Request-Id": request_id},
    )
    with urllib.request.urlopen(req, timeout=90) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def feed_counts(redis_url: str | None, ids: set[str]) -> Counter[str] | None:
    """How often each of ``ids`` is in the gateway's JSON feed: twice would be a result delivered twice."""
    if redis_url is None:
        return None
    import redis

    client = redis.Redis.from_url(redis_url)
    counts: Counter[str] = Counter()
    entries: Any = client.xrange(FEED, "-", "+")
    for _, fields in entries:
        key = fields.get(b"k", b"").decode()
        if key in ids:
            counts[key] += 1
    client.close()
    return counts


def case_photos(ctx: Ctx, name: str = "photos") -> Row:
    want = expected_labels(ctx.out)
    images = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in IMAGE_TYPES)
    row = Row(f"{name} ({ctx.broker})", sent=len(images), answered=0)
    ids: dict[str, str] = {}
    wrong: list[str] = []
    for image in images:
        rid = f"ci-{uuid.uuid4().hex[:12]}"
        ids[rid] = image.name
        try:
            doc = detect(ctx.gateway, image, rid)
        except (urllib.error.URLError, TimeoutError) as exc:
            wrong.append(f"{image.name}: {exc}")
            continue
        row.answered = (row.answered or 0) + 1
        got = sorted(o["label_name"] for o in doc.get("objects", []))
        print(f"    {image.name}: {', '.join(got) or '(nothing)'}", flush=True)
        if got != want.get(image.name):
            wrong.append(f"{image.name}: got {got}, `make run` gives {want.get(image.name)}")
    row.lost = row.sent - (row.answered or 0) if row.sent is not None else None
    time.sleep(2)  # the feed is written just after the gateway answers
    counts = feed_counts(ctx.redis, set(ids))
    if counts is not None:
        row.doubled = sum(n - 1 for n in counts.values() if n > 1)
        missing = [ids[r] for r in ids if counts[r] == 0]
        if missing:
            wrong.append(f"not in the feed: {missing}")
    row.ok = not wrong and row.lost == 0 and not row.doubled
    row.note = "; ".join(wrong) or "labels as `make run` gives"
    return row


# --- load: the loadgen profile, and the host's load generator while something is killed --------------------------


def case_loadgen_profile(ctx: Ctx) -> Row:
    """`docker compose --profile loadgen up loadgen`: it runs in the stack, exits by itself, reports 0 lost."""
    row = Row(f"loadgen profile ({ctx.broker})")
    proc = run([*ctx.compose, "--profile", "loadgen", "up", "--no-build", "loadgen"], timeout=900, check=False)
    (cid,) = run([*ctx.compose, "--profile", "loadgen", "ps", "-a", "-q", "loadgen"]).stdout.split()
    code = int(run(["docker", "inspect", "-f", "{{.State.ExitCode}}", cid]).stdout.strip())
    dest = ctx.out / f"loadgen-{ctx.broker.split()[0]}"
    run([*ctx.compose, "--profile", "loadgen", "cp", "loadgen:/out/.", str(dest)])
    summary = json.loads((dest / "results.json").read_text())["runs"][0]["summary"]
    clean = fill(row, summary)
    ok = proc.returncode == 0 and code == 0 and row.lost == 0 and row.doubled == 0 and bool(row.sent)
    row.ok = ok and clean and not summary.get("failed")
    row.note += f" exit {code}; report in {dest}"
    return row


# How the load generator words a send the broker did not take (runner.py): never acknowledged, so never owed a result.
REFUSED_AT_SEND = ("broker error:", "backpressure:")


def fill(row: Row, summary: dict[str, Any]) -> bool:
    """The load generator's counts into ``row``; False when a stage dead-lettered one of the requests."""
    row.sent, row.answered = summary.get("sent"), summary.get("completed")
    row.lost, row.doubled = summary.get("lost"), summary.get("duplicates")
    reasons: dict[str, int] = summary.get("failure_reasons") or {}
    refused = sum(n for r, n in reasons.items() if r.startswith(REFUSED_AT_SEND))
    if refused:
        row.note += f" {refused} refused at send while the broker was down (never acknowledged, so not owed);"
    dead = {r: n for r, n in reasons.items() if not r.startswith(REFUSED_AT_SEND)}
    if dead:
        row.note += f" dead-lettered by a stage: {dead};"
    return not dead and refused + sum(dead.values()) == summary.get("failed", 0)


def in_flight(redis_url: str, stage: str) -> int:
    """Deliveries ``stage``'s consumer group has read and not yet settled: work a kill would interrupt."""
    import redis

    from visionpipe.settings import StreamSettings
    from visionpipe.topology import hop

    client = redis.Redis.from_url(redis_url)
    try:
        groups = client.xinfo_groups(StreamSettings(prefix="vp").name(hop(stage).source))
    except redis.ResponseError:  # the stream is not there yet
        return 0
    finally:
        client.close()
    return sum(int(g["pending"]) for g in groups if g["name"].decode() == stage)


def load_while(ctx: Ctx, name: str, action: list[list[str]], at_s: float) -> Row:
    """The host's load generator against the stack's Redis; ``action`` (compose commands) at ``at_s`` into it,
    as soon as the detector has work in hand, so that the action lands mid-request and not between requests."""
    if ctx.redis is None:
        return Row(name, note="needs Redis's published port")
    redis_url = ctx.redis
    dest = ctx.out / name.replace(" ", "-")
    cmd = [str(VENV_BIN / "visionpipe"), "loadgen", "run", "--broker", ctx.redis, "--external", "--no-progress"]
    cmd += ["--pattern", "constant", "--rate", str(ctx.rate), "--duration", str(ctx.duration), "--synthetic"]
    # A killed stage is back only once its model is loaded again: silence that long is not loss.
    cmd += ["640x480", "--warmup", "2", "--drain-timeout", "150", "--out", str(dest)]
    env = {**_env(), "VISIONPIPE_STREAMS__PREFIX": "vp"}
    errors: list[str] = []
    busy: list[int] = []

    def act() -> None:
        time.sleep(at_s)
        deadline = time.monotonic() + 20
        while (n := in_flight(redis_url, "detector")) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy.append(n)
        for step in action:
            try:
                run(step, timeout=180)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))

    actor = threading.Thread(target=act)
    print("  $", shlex.join(cmd), flush=True)
    gen = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    actor.start()
    output, _ = gen.communicate(timeout=ctx.duration + 600)
    actor.join()
    (dest / "loadgen.log").parent.mkdir(parents=True, exist_ok=True)
    (dest / "loadgen.log").write_text(output)
    row = Row(name)
    results = dest / "results.json"
    if not results.exists():
        row.note = f"load generator exited {gen.returncode} without a report: {output.strip()[-800:]}"
        return row
    clean = fill(row, json.loads(results.read_text())["runs"][0]["summary"])
    mid_load = bool(busy and busy[0])
    row.ok = mid_load and clean and gen.returncode == 0 and not errors and row.lost == 0 and row.doubled == 0
    row.ok = row.ok and bool(row.sent)
    row.note += f" load generator exit {gen.returncode}; detector had {busy[0] if busy else '?'} in hand then"
    row.note += f"; {'; '.join(errors)}" if errors else ""
    return row


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("VISIONPIPE_")}


def started_at(ctx: Ctx, service: str) -> str:
    (cid,) = run([*ctx.compose, "ps", "-q", service]).stdout.split()
    return run(["docker", "inspect", "-f", "{{.State.StartedAt}}", cid]).stdout.strip()


def case_kill_detector(ctx: Ctx) -> Row:
    before = started_at(ctx, "detector")
    row = load_while(
        ctx,
        "SIGKILL detector mid-load",
        [[*ctx.compose, "kill", "-s", "SIGKILL", "detector"], [*ctx.compose, "up", "-d", "--no-build", "detector"]],
        at_s=ctx.duration / 3,
    )
    if started_at(ctx, "detector") == before:
        row.ok, row.note = False, row.note + "; the detector was not restarted"
    return row


def case_restart_redis(ctx: Ctx) -> Row:
    import redis

    assert ctx.redis is not None
    client = redis.Redis.from_url(ctx.redis)
    aof = client.config_get("append*")
    client.close()
    before = started_at(ctx, "redis")
    row = load_while(ctx, "restart redis mid-load", [[*ctx.compose, "restart", "redis"]], at_s=ctx.duration / 3)
    row.note += f"; appendonly {aof.get('appendonly')}, appendfsync {aof.get('appendfsync')}"
    if aof.get("appendonly") != "yes" or started_at(ctx, "redis") == before:
        row.ok, row.note = False, row.note + "; not a restart of a Redis with its append-only file on"
    return row


# --- down and up again ---------------------------------------------------------------------------------------------


def case_down_up(ctx: Ctx) -> Row:
    """`down` then `up`: Redis's volume keeps what was acknowledged, the models come from the image, it serves."""
    import redis

    assert ctx.redis is not None
    marker = uuid.uuid4().hex
    client = redis.Redis.from_url(ctx.redis)
    client.set("ci:marker", marker)
    feed_before = client.xlen(FEED)
    client.close()
    time.sleep(2)  # appendfsync everysec: what a clean shutdown writes anyway, but not less
    run([*ctx.compose, "down"], timeout=300)
    volumes = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project(ctx)}"])
    run([*ctx.compose, "up", "-d", "--no-build", "--wait", "--wait-timeout", "600"], timeout=700)
    client = redis.Redis.from_url(ctx.redis)
    kept, feed_after = client.get("ci:marker"), client.xlen(FEED)
    client.close()
    row = case_photos(ctx, "down, up, photos")
    row.case = f"down + up ({ctx.broker})"
    logs = run([*ctx.compose, "logs", "--no-color", "detector", "classifier"]).stdout
    fetched = [line for line in logs.splitlines() if "download" in line.lower()]
    problems = [] if row.ok else [row.note]
    if kept != marker.encode():
        problems.append(f"the marker written before `down` came back as {kept!r}")
    if feed_after < feed_before:
        problems.append(f"the results feed shrank from {feed_before} to {feed_after}")
    if fetched:
        problems.append(f"a stage downloaded something at start: {fetched[:2]}")
    row.ok = not problems
    row.note = "; ".join(problems) or (
        f"volumes kept ({len(volumes.stdout.split())}), marker and {feed_after} feed entries kept, no download at start"
    )
    return row


def project(ctx: Ctx) -> str:
    return ctx.compose[ctx.compose.index("-p") + 1]


# --- how the containers run ---------------------------------------------------------------------------------------

# The stages and the gateway run read-only (docker-compose.yml); the brokers write their data directory.
MUST_BE_READ_ONLY = ("decode", "detector", "classifier", "gateway")


def case_containers(ctx: Ctx) -> Row:
    ids = run([*ctx.compose, "ps", "-q"]).stdout.split()
    problems, seen = [], []
    brokers: set[str] = set()
    for cid in ids:
        info = json.loads(run(["docker", "inspect", cid]).stdout)[0]
        service = info["Config"]["Labels"]["com.docker.compose.service"]
        uid = run(["docker", "exec", cid, "id", "-u"], check=False).stdout.strip()
        read_only = info["HostConfig"]["ReadonlyRootfs"]
        seen.append(f"{service} uid {uid or '?'}{' ro' if read_only else ' rw'}")
        env = dict(e.split("=", 1) for e in info["Config"]["Env"] if "=" in e)
        if service in MUST_BE_READ_ONLY:
            brokers.add(env.get("VISIONPIPE_BROKER__URL", "?"))
        if uid in ("", "0"):
            problems.append(f"{service} runs as uid {uid or 'unknown'}")
        if service in MUST_BE_READ_ONLY and not read_only:
            problems.append(f"{service}'s root filesystem is writable")
    if len(brokers) != 1:
        problems.append(f"the stages and the gateway disagree on the broker: {sorted(brokers)}")
    note = "; ".join(problems or [*seen, f"broker {', '.join(sorted(brokers))}"])
    return Row(f"containers ({ctx.broker})", ok=bool(ids) and not problems, note=note)


CASES = {
    "photos": case_photos,
    "loadgen-profile": case_loadgen_profile,
    "kill-detector": case_kill_detector,
    "restart-redis": case_restart_redis,
    "down-up": case_down_up,
    "containers": case_containers,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compose", required=True, help="the docker compose command, with -p and -f")
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--redis", default=None, help="Redis's published URL (cases that read or load the broker)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--broker-label", default="redis")
    ap.add_argument("--rate", type=float, default=2.0, help="load of the kill cases, requests/s")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load in the kill cases")
    ap.add_argument("cases", nargs="+", choices=sorted(CASES))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(
        shlex.split(args.compose), args.gateway, args.redis, args.out, args.broker_label, args.rate, args.duration
    )
    failed = 0
    for name in args.cases:
        print(f"--- {name} ({ctx.broker})", flush=True)
        start = time.monotonic()
        try:
            row = CASES[name](ctx)
        except Exception as exc:  # a case that breaks is a failed case, reported like one; the others still run
            row = Row(f"{name} ({ctx.broker})", note=f"{type(exc).__name__}: {exc}")
        verdict = "ok" if row.ok else "FAILED"
        print(
            f"{verdict:6} {row.case}: sent {row.sent} answered {row.answered} lost {row.lost} doubled {row.doubled}"
            f" ({time.monotonic() - start:.0f} s) {row.note}",
            flush=True,
        )
        with (args.out / "cases.jsonl").open("a") as fh:
            fh.write(json.dumps({**asdict(row), "seconds": round(time.monotonic() - start, 1)}) + "\n")
        failed += not row.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
