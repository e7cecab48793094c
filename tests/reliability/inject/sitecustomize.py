"""Test-only faults for ``visionpipe serve`` processes started with this folder on PYTHONPATH (Python imports a
``sitecustomize`` by itself at start-up). Nothing in the package knows of it.

* A message whose request id starts with ``KILL-ME`` kills the process (SIGKILL) the moment the stage is given
  it to work on, as a decoder segfault or an OOM kill would (not before: the worker may dead-letter it first).
* With ``RELIABILITY_PLAIN_SETTLE=1`` the Redis settle is the two-step fallback (publish, then ack): a control,
  to see the exactly-once tests fail without the one-step settle.
* With ``RELIABILITY_STANDIN_STAGES=1``, the detector and classifier are stand-ins without a model (a few ms of
  sleep for compute) and decode is the real CPU letterbox without the torch import: the worker, its middleware
  and the broker are the real ones, and a restart costs a second instead of a torch import and a warm-up, so a
  test can kill stages sixty times. Bad images are still refused for the real decoder's reasons.
* With ``RELIABILITY_TXN_HOLD_S=S`` and ``RELIABILITY_TXN_OPEN_FILE=F`` (Kafka with transactions), every settle's
  transaction stays open ``S`` seconds after its outputs are produced and before its offsets and commit: a line
  appended to ``F`` says when one is open, so a test can stop or kill the stage inside it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence

KILL_MARK = "KILL-ME"
COMPUTE_S = {"decode": 0.005, "detector": 0.03, "classifier": 0.02}

try:
    from visionpipe.envelope import Envelope, Event
    from visionpipe.hops import Letterboxed
    from visionpipe.services.decode.images import BadImage, letterbox_cpu
    from visionpipe.services.runtime import factory as _serve
    from visionpipe.services.runtime import worker as _worker
    from visionpipe.services.runtime.stage import BadInput, BatchStage, Outcome
except ImportError:  # another Python program started with this PYTHONPATH: nothing to arm
    _worker = None  # type: ignore[assignment]


if _worker is not None:
    _init = _worker.Worker.__init__

    def _init_armed(self, stage, *args, **kwargs):  # type: ignore[no-untyped-def]
        _init(self, stage, *args, **kwargs)
        items = stage.items

        def items_or_die(envelopes):  # type: ignore[no-untyped-def]
            if any(env.request_id.startswith(KILL_MARK) for env in envelopes):
                os.kill(os.getpid(), signal.SIGKILL)
            return items(envelopes)

        stage.items = items_or_die

    _worker.Worker.__init__ = _init_armed  # type: ignore[method-assign]

    class StandIn(BatchStage):
        def __init__(self, name: str, settings) -> None:  # type: ignore[no-untyped-def]
            self.name, self.settings = name, settings

        async def start(self) -> None:
            return None

        async def process(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
            out: list[Outcome] = []
            for env in envelopes:
                env.stamp(self.name, Event.BATCH_START)
                await asyncio.sleep(COMPUTE_S[self.name])
                try:
                    child = self._next(env)
                except BadInput as exc:
                    out.append(exc)
                    continue
                child.stamp(self.name, Event.COMPUTE_DONE)
                out.append(child)
            return out

        def _next(self, env: Envelope) -> Envelope:
            if self.name == "decode":
                image = env.payload.get("image")
                if not isinstance(image, bytes):
                    raise BadInput("no image bytes in the frame")
                s = self.settings
                try:
                    tensor, geo = letterbox_cpu(image, s.decode.input_size, s.limits, s.decode.pad_value)
                except BadImage as exc:
                    raise BadInput(exc.reason) from exc
                return Letterboxed(tensor, geo.width, geo.height, geo.scale, geo.pad).write(env)
            if self.name == "detector":
                if "image" not in env.arrays:
                    raise BadInput("detector input has no image")
                return env.child(
                    width=env.payload.get("width"),
                    height=env.payload.get("height"),
                    objects=[{"box": [0, 0, 1, 1], "score": 0.5, "label": 1}],
                )
            obj = {"box": [0, 0, 1, 1], "score": 0.5, "label": 1, "top_k": [[1, 0.5]]}
            return env.child(width=env.payload.get("width"), height=env.payload.get("height"), objects=[obj])

    if os.environ.get("RELIABILITY_STANDIN_STAGES") == "1":
        _make_stage = _serve.make_stage

        def _stand_in(name, settings, metrics):  # type: ignore[no-untyped-def]
            return StandIn(name, settings)

        _serve.make_stage = _stand_in  # type: ignore[assignment]

    if os.environ.get("RELIABILITY_PLAIN_SETTLE") == "1":  # a control: publish, then ack, in two steps as before
        from visionpipe.broker import Settled
        from visionpipe.broker.redis_streams import RedisBroker

        _one_step = RedisBroker.settle

        async def _two_steps(self, stream, group, settled):  # type: ignore[no-untyped-def]
            for item in settled:
                for out in item.outputs:
                    await self.publish(out.stream, [out.data], [out.key])
            await _one_step(self, stream, group, [Settled(item.delivery) for item in settled])
            return 0

        RedisBroker.settle = _two_steps  # type: ignore[method-assign]

    if os.environ.get("RELIABILITY_TXN_HOLD_S"):
        import time

        from visionpipe.broker import kafka_txn

        _hold_s = float(os.environ["RELIABILITY_TXN_HOLD_S"])
        _open_file = os.environ["RELIABILITY_TXN_OPEN_FILE"]
        _make = kafka_txn.Transactions.producer

        class _Held:
            """The transactional producer, holding each transaction open before its offsets go in."""

            def __init__(self, producer):  # type: ignore[no-untyped-def]
                self._producer = producer

            def __getattr__(self, name):  # type: ignore[no-untyped-def]
                return getattr(self._producer, name)

            def send_offsets_to_transaction(self, *args):  # type: ignore[no-untyped-def]
                self._producer.flush(5.0)  # the outputs are at the brokers, uncommitted
                with open(_open_file, "a") as f:
                    f.write(f"open {os.getpid()}\n")
                time.sleep(_hold_s)
                return self._producer.send_offsets_to_transaction(*args)

        def _held_producer(self, member):  # type: ignore[no-untyped-def]
            return _Held(_make(self, member))

        kafka_txn.Transactions.producer = _held_producer  # type: ignore[method-assign]
