"""The ingest service's own results reader: JSONL in frame order per stream, and the annotated videos.

Only for ``visionpipe ingest --results FILE`` and streams with ``annotate``: a deployment's consumers read
the results stream themselves, the same way (:mod:`.results`). Lines are written as each stream's chain
lets them out, so within a stream the file is in frame order; streams interleave. It reads in a consumer
group of its own (``ingest.results_group``), so it takes nothing from any other reader, and it keeps only
the runs of this service's streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from visionpipe.broker import Broker
from visionpipe.collector import Collected, Collector
from visionpipe.services.ingest.annotate import scaled_objects, write_annotated
from visionpipe.services.ingest.order import Outcome, StreamOrder, from_dead_letter, from_expiry, from_result
from visionpipe.settings import Settings

log = logging.getLogger(__name__)

# Results read per poll wait: short, so a stream's end is noticed soon after its last result.
POLL_S = 0.1


class StreamTarget:
    """What the sink does for one stream run: where its annotated video goes, and the source to redraw."""

    def __init__(self, stream_id: str, source: str, annotate: str | None) -> None:
        self.stream_id, self.source, self.annotate = stream_id, source, annotate
        self.order = StreamOrder()
        self.objects: dict[int, list[dict[str, Any]]] = {}


class ResultsSink:
    def __init__(self, broker: Broker, settings: Settings, out: Path | None, consumer: str) -> None:
        self.collector = Collector(broker, settings, settings.ingest.results_group, consumer)
        self.out = out
        self.targets: dict[str, StreamTarget] = {}  # by run
        self._file: IO[str] | None = None
        self._finished: list[StreamTarget] = []
        self.annotated: dict[str, Path] = {}  # stream id -> video written

    def follow(self, run: str, target: StreamTarget) -> None:
        self.targets[run] = target

    def done(self, runs: list[str]) -> bool:
        """True once every run in ``runs`` has had its end-of-stream message let out (and its video written)."""
        return all(self.targets[r].order.ended for r in runs if r in self.targets) and not self._finished

    async def open(self) -> ResultsSink:
        await self.collector.open()
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.out.open("a")
        return self

    async def run(self, stopping: Callable[[], bool]) -> None:
        while not stopping():
            await self.collector.poll(POLL_S, self._take)
            while self._finished:
                await self._annotate(self._finished[0])
                self._finished.pop(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _take(self, batch: Collected) -> None:
        outcomes = [from_result(env) for env in batch.results] + [from_dead_letter(d) for d in batch.dead]
        outcomes += [from_expiry(env, expiry) for env, expiry in batch.expired]
        for outcome in outcomes:
            target = self.targets.get(outcome.ref.run) if outcome is not None else None
            if outcome is None or target is None:
                continue  # a still image's, or another ingest's stream
            for ready in target.order.add(outcome):
                self._emit(target, ready)
        if self._file is not None:
            self._file.flush()

    def _emit(self, target: StreamTarget, outcome: Outcome) -> None:
        if self._file is not None:
            self._file.write(json.dumps(outcome.record) + "\n")
        if target.annotate and outcome.record.get("ok"):
            target.objects[outcome.ref.index] = scaled_objects(outcome.record)
        if outcome.end and target.annotate:
            self._finished.append(target)

    async def _annotate(self, target: StreamTarget) -> None:
        assert target.annotate is not None
        out = Path(target.annotate)
        try:
            frames = await asyncio.to_thread(write_annotated, target.source, out, target.objects)
        except Exception as exc:  # a failed drawing must not end the service or the other streams
            log.error("stream %s: annotated video %s failed: %s: %s", target.stream_id, out, type(exc).__name__, exc)
            return
        self.annotated[target.stream_id] = out
        log.info("stream %s: annotated video %s (%d frames)", target.stream_id, out, frames)
