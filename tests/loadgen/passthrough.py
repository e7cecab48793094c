"""A stand-in pipeline stage for load-generator tests: real broker, no model.

It consumes its stage's input stream in the stage's consumer group and
republishes each message downstream with the same timestamps a real stage
writes (dequeued, batch_start, compute_done, published), sleeping a little
for "compute"; the classifier stand-in writes a result payload. It runs
in-process (``run_stage``) or as a subprocess with the ``visionpipe serve``
flags and a ``/readyz`` endpoint, so the compare orchestration can start it
exactly as it starts the real stages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

from PIL import Image

from visionpipe.broker import connect
from visionpipe.envelope import Envelope, Event
from visionpipe.services.runtime.announce import Announcer
from visionpipe.services.runtime.budgets import HopFloor
from visionpipe.settings import Settings, load_settings
from visionpipe.stage_state import READY
from visionpipe.topology import CLASSIFIER, DECODE, hop

COMPUTE_S = {"decode": 0.001, "detector": 0.003, "classifier": 0.002}
POISON = b"not an image"


# The classifier stand-in's one box, as fractions of the image: a client can check where it lands.
BOX = (0.25, 0.25, 0.6, 0.75)


def _size(env: Envelope) -> tuple[int, int]:
    """The image's size from its header (decode), else as carried on (later stages), else 8x8."""
    image = env.payload.get("image")
    if isinstance(image, bytes):
        with contextlib.suppress(Exception), Image.open(io.BytesIO(image)) as img:
            return img.size
    return int(env.payload.get("width", 8)), int(env.payload.get("height", 8))


def _next(env: Envelope, stage: str) -> Envelope:
    width, height = _size(env)
    if stage == CLASSIFIER:
        box = [BOX[0] * width, BOX[1] * height, BOX[2] * width, BOX[3] * height]
        top = [{"label": 1, "name": "thing", "score": 0.5}]
        obj = {"box": box, "score": 0.9, "label": 1, "label_name": "thing", "top_k": top}
        return env.child(
            width=width, height=height, objects=[obj], weights={"detector": "random", "classifier": "random"}
        )
    return env.child(stage=stage, width=width, height=height)


async def run_stage(
    stage: str,
    settings: Settings,
    stop: asyncio.Event,
    drain: bool = False,
    stall: Callable[[str], float] | None = None,
    compute_scale: float = 1.0,
) -> None:
    """Pass messages on until ``stop``; ``stall(request_id)`` gives seconds this stage hangs on a request."""
    source, sink = hop(stage).source, hop(stage).sink
    src, dst = settings.streams.name(source), settings.streams.name(sink)
    broker = await connect(settings.broker.url, settings)
    # It says it is ready as a real stage does (the gateway's readiness waits for every stage), expecting nothing.
    announcer = Announcer(broker, settings, stage, f"pt-{stage}", lambda backlog: (None, 0.0, True), HopFloor())
    announcer.state = READY
    try:
        await broker.ensure(src, stage)
        announcer.start()
        while not stop.is_set():
            got = await broker.consume(src, stage, f"pt-{stage}", 16, 0.05)
            if not got:
                if drain:
                    return
                continue
            out, keys = [], []
            for d in got:
                env = Envelope.decode(d.data)
                env.stamp(stage, Event.DEQUEUED)
                if stage == DECODE and env.payload.get("image") == POISON:
                    await broker.dead_letter(
                        settings.streams.name("dead_letter"),
                        reason="not an image",
                        data=d.data,
                        stage=stage,
                        origin=src,
                        request_id=env.request_id,
                    )
                    continue
                if stall is not None:
                    await asyncio.sleep(stall(env.request_id))
                env.stamp(stage, Event.BATCH_START)
                if compute_scale:
                    await asyncio.sleep(COMPUTE_S[stage] * compute_scale)
                env.stamp(stage, Event.COMPUTE_DONE)
                nxt = _next(env, stage)
                nxt.stamp(stage, Event.PUBLISHED)
                out.append(nxt.encode())
                keys.append(env.request_id)
            if out:
                await broker.publish(dst, out, keys)
            await broker.ack(src, stage, got)
    finally:
        await announcer.stop()
        await broker.close()


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/readyz", "/healthz") else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--port", type=int, default=0)
    # 0: no stand-in compute at all, so a benchmark of what lies around the stages sees only broker hops.
    parser.add_argument("--compute-scale", type=float, default=float(os.environ.get("PASSTHROUGH_COMPUTE_SCALE", 1)))
    args = parser.parse_args()
    settings = load_settings(broker={"url": args.broker})
    server = HTTPServer(("127.0.0.1", args.port), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def amain() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await run_stage(args.stage, settings, stop, compute_scale=args.compute_scale)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(amain())
    server.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
